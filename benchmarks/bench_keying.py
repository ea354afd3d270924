"""Keying benchmark: 68 empties x 10,000 frames with the linear path (keyframe_points.add + foreach_set) vs
keyframe_insert on 68 x 1,000 frames (baseline), in the same run.  ``python benchmarks/bench_keying.py``"""
from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="prn_bench_user_"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    import bpy
    import numpy as np
    from prn_blender.blender.scene import key_landmarks
    n_lin, n_ins = int(os.environ.get("BENCH_LINEAR_FRAMES", 10000)), int(os.environ.get("BENCH_INSERT_FRAMES", 1000))
    rng = np.random.default_rng(0)

    def empties(tag):
        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        out = []
        for i in range(68):
            o = bpy.data.objects.new(f"{tag}_{i:02d}", None)
            bpy.context.scene.collection.objects.link(o)
            out.append(o)
        return out

    objs = empties("lin")
    lm = rng.standard_normal((n_lin, 68, 3)).astype(np.float32)
    t0 = time.perf_counter()
    key_landmarks(objs, np.arange(1, n_lin + 1), lm)
    t_lin = time.perf_counter() - t0

    objs = empties("ins")
    lm = rng.standard_normal((n_ins, 68, 3)).astype(np.float32)
    t0 = time.perf_counter()
    for f in range(n_ins):
        for i, o in enumerate(objs):
            o.location = lm[f, i].tolist()
            o.keyframe_insert("location", frame=f + 1)
    t_ins = time.perf_counter() - t0

    per_lin = t_lin / (68 * n_lin) * 1e6
    per_ins = t_ins / (68 * n_ins) * 1e6
    print(f"bpy {bpy.app.version_string}")
    print(f"linear  (keyframe_points.add + foreach_set): 68 x {n_lin} frames: {t_lin:.2f} s ({per_lin:.2f} us/key-vec)")
    print(f"baseline (keyframe_insert):                 68 x {n_ins} frames: {t_ins:.2f} s ({per_ins:.2f} us/key-vec)")
    print(f"ratio: baseline on {n_ins / n_lin:.2g}x the frames took {t_ins / t_lin:.1f}x the time; "
          f"per keyed frame {per_ins / per_lin:.0f}x faster")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
