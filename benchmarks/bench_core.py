"""Core speed benchmark (one run prints every figure with its same-run baseline and the ratio).

* network: full-size ResFCN256 (random weights: speed does not depend on values), batch 1 latency and batch 8
  throughput, optimized path (bf16 autocast + channels_last on CPU / fp16 on CUDA, inference_mode) vs naive eager
  fp32 NCHW of the same weights; plus width 8 and the shipped model's width. Training step (batch 8, autocast, Adam):
  channels_last, as train.py runs it, vs NCHW.
* end-to-end image -> FaceResult with the shipped weights, split by stage, and video frames per second; the texture
  stage as fine as the photo vs 256 texels, the portrait upscaled x1-x8; with
  ``--weights A B``, those of each model, and B's times against A's (e.g. a wider model against the last one).
* synthetic data engine throughput (samples/s) when ../shared is present.
* ``loop`` (only when asked for, with ../shared): train.py itself, steady-state training samples/s with one batch
  rendered at a time (``--render-batches 1``, the baseline) and four at once (``--render-batches 4``, as
  tools/gpu_train.sh trains), same run.
Run: ``.venv/bin/python benchmarks/bench_core.py [--device cpu|cuda] [--reps N] [--only net,e2e,data,video,loop]
[--data-batch 16,256] [--profile] [--loop WIDTH,BATCH,STEPS] [--weights BASELINE.safetensors OTHER.safetensors]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from prn_blender.core.network import ResFCN256  # noqa: E402


def timeit(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_net(width, dev, reps):
    m = ResFCN256(width).to(dev).eval()
    fast = ResFCN256(width).to(dev).eval()
    fast.load_state_dict(m.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    dt = torch.float16 if dev.type == "cuda" else torch.bfloat16
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def naive(x):
        with torch.no_grad():
            m(x)
        sync()

    def opt(x):
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dt):
            fast(x.contiguous(memory_format=torch.channels_last))
        sync()

    rows = []
    for b in (1, 8):
        x = torch.rand(b, 3, 256, 256, device=dev)
        tn = timeit(lambda: naive(x), reps)
        to = timeit(lambda: opt(x), reps)
        rows.append((b, tn * 1e3 / b, to * 1e3 / b, tn / to))
    return rows


def bench_train_step(width, dev, reps, batch=8):
    """ms per training step (forward + backward + Adam, autocast) in channels_last (the training path of
    train.loop) and in NCHW, same weights and batch."""
    dt = torch.float16 if dev.type == "cuda" else torch.bfloat16
    out = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        m = ResFCN256(width).to(dev).to(memory_format=fmt).train()
        opt = torch.optim.Adam(m.parameters(), 1e-5)
        x = torch.rand(batch, 3, 256, 256, device=dev).contiguous(memory_format=fmt)
        y = torch.rand(batch, 3, 256, 256, device=dev)

        def step():
            with torch.autocast(dev.type, dtype=dt):
                p = m(x)
            loss = (p.float() - y).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        out[fmt] = timeit(step, reps) * 1e3
    return out[torch.contiguous_format], out[torch.channels_last]


def texture_stage(rec, image, reps):
    """The texture stage (reconstruct.texture_from_image) for the face of ``image`` and for the same face in the
    photo upscaled x2, x4, x8: the texture as fine as the photo (the default) against a 256-texel one, same run."""
    import cv2

    from prn_blender.core.image_io import load_image
    from prn_blender.core.reconstruct import texture_from_image
    img = load_image(image)
    face = rec(img, texture=False)[0]
    print("\ntexture stage (texture_from_image), ms: as fine as the photo (the default) vs 256 texels")
    for k in (1, 2, 4, 8):
        big = cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC) if k > 1 else img
        pos, verts = face.position_map.copy(), face.vertices.copy()
        for x in (pos.reshape(-1, 3), verts):            # the same surface in the upscaled photo's pixels
            x[:, :2] = (x[:, :2] + 0.5) * k - 0.5
            x[:, 2] *= k
        side = texture_from_image(big, pos, verts, rec.layout)[1].shape[0]
        t_auto, t_256 = (timeit(lambda b=big, p=pos, v=verts, n=n: texture_from_image(b, p, v, rec.layout, n), reps)
                         for n in (None, 256))
        print(f"  photo x{k} ({big.shape[1]}x{big.shape[0]}): {side} texels {t_auto * 1e3:.1f} | 256 texels "
              f"{t_256 * 1e3:.1f} | x{t_auto / t_256:.2f}")


def bench_loop(dev, width, batch, steps, render_batches):
    """Steady-state training samples/s of train.py (a fresh width ``width`` model, batch ``batch``, ``steps``
    steps, reuse 1 and bf16 autocast as tools/gpu_train.sh trains) over its last two thirds, from the run's own log."""
    import json
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "train.py"), "--out", d,
                        "--device", dev.type, "--width", str(width), "--batch", str(batch), "--steps", str(steps),
                        "--reuse", "1", "--amp", "bf16", "--save-every", str(steps),
                        "--render-batches", str(render_batches),
                        "--no-progress"],
                       check=True, capture_output=True, timeout=900)
        log = [json.loads(x) for x in (Path(d) / "log.jsonl").read_text().splitlines()]
    a, b = log[steps // 3], log[-1]
    return (b["samples"] - a["samples"]) / (b["elapsed"] - a["elapsed"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image", help="photo for the end-to-end split (default: scikit-image astronaut)")
    ap.add_argument("--only", default="net,e2e,data,video", help="comma-separated sections to run")
    ap.add_argument("--data-batch", default="16", help="comma-separated batch sizes for the training data path")
    ap.add_argument("--profile", action="store_true",
                    help="data section: also the data path's top operators by self time (device time on CUDA), "
                         "at the largest --data-batch")
    ap.add_argument("--loop", help="WIDTH,BATCH,STEPS of the loop section (default 16,64,60 on CUDA, 8,4,12 on "
                                   "the CPU)")
    ap.add_argument("--weights", nargs="+", default=[],
                    help="weights for the end-to-end and video sections (default: the shipped ones); with several, "
                         "each one's times against the first's")
    a = ap.parse_args()
    only = set(a.only.split(","))
    dev = torch.device(a.device)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    from prn_blender.core.weights import DEFAULT_WEIGHTS, read_metadata
    shipped_w = int(read_metadata(DEFAULT_WEIGHTS)["width"]) if DEFAULT_WEIGHTS.exists() else 8
    for width in sorted({16, 8, shipped_w}, reverse=True) if "net" in only else ():
        print(f"\nResFCN256 width {width}: ms/image (naive fp32 NCHW eager | optimized) and speed-up")
        for b, tn, to, r in bench_net(width, dev, a.reps):
            print(f"  batch {b}: naive {tn:7.1f} ms/img ({1e3 / tn:6.1f} img/s) | optimized {to:7.1f} ms/img "
                  f"({1e3 / to:6.1f} img/s) | x{r:.2f}")
        tn, tc = bench_train_step(width, dev, a.reps)
        print(f"  training step, batch 8: NCHW {tn:7.1f} ms | channels_last (train.py) {tc:7.1f} ms "
              f"({8e3 / tc:5.1f} img/s) | x{tn / tc:.2f}")
    weights = [Path(w) for w in a.weights] or ([DEFAULT_WEIGHTS] if DEFAULT_WEIGHTS.exists() else [])
    names = [f"{w.name} (width {read_metadata(w)['width']})" for w in weights]
    e2e = {}                                  # (weights, label) -> ms per image, or per frame for video
    if "e2e" in only:
        from prn_blender.core.constants import PHOTO_SCALES, PHOTO_TURNS, SURROUND_BLUR, VIDEO_SCALES, VIDEO_TURNS
        from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
        if a.image:
            img = a.image
        else:
            from skimage import data
            img = data.astronaut()
        for w, name in zip(weights, names):
            totals = {}
            video, photo = (VIDEO_SCALES, VIDEO_TURNS), (PHOTO_SCALES, PHOTO_TURNS)
            for label, (scales, turns), wide, blur in (
                    ("one view, no periphery view, as video", video, False, None),
                    ("turned views, no periphery view", photo, False, None),
                    ("turned views + periphery view", photo, True, None),
                    ("turned views + periphery view + blurred-surround views, the default for photos", photo, True,
                     SURROUND_BLUR)):
                rec = FaceReconstructor(w, device=a.device, options=InferenceOptions(
                    scales=scales, turns=turns, periphery=wide, surround_blur=blur))
                rec(img)
                acc = {}
                for _ in range(a.reps):
                    for k, v in rec(img)[0].timings.items():
                        acc.setdefault(k, []).append(v)
                totals[label] = e2e[name, label] = tot = sum(np.median(v) for v in acc.values())
                print(f"\nend-to-end image -> FaceResult ({name}, mirror averaging, {label} {turns}), "
                      "median ms by stage:")
                print("  " + ", ".join(f"{k} {np.median(v):.1f}" for k, v in acc.items()) + f"; total {tot:.1f} ms")
            one, multi, wide, photo = totals.values()
            print(f"  turned views / one view: x{multi / one:.2f} time; the periphery view: x{wide / multi:.2f}; "
                  f"the blurred-surround views: x{photo / wide:.2f}")
        texture_stage(rec, img, a.reps)
    from prn_blender.core.paths import shared_dir
    if shared_dir(required=False) and "data" in only:
        from prn_blender.synth.ict import load_ict
        from prn_blender.synth.render import FaceRenderer
        from prn_blender.synth.sampler import sample_params
        from prn_blender.train.data import SyntheticStream
        ict = load_ict()
        g = torch.Generator().manual_seed(0)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        B = 16
        p = sample_params(B, ict.expression_names, g, dev)
        for density, label in ((40.0, "training density"), (90.0, "evaluation density")):
            r = FaceRenderer(ict, device=dev, density=density)
            t_one = timeit(lambda: (r.render(p, chunk=B), sync()), 3)
            t = timeit(lambda: (r.render(p), sync()), 3)
            print(f"\ndata engine render ({label}, {r.n_points:,} points), batch {B}: {B / t:.1f} samples/s in "
                  f"chunks of 4 vs {B / t_one:.1f} as one batch (x{t_one / t:.2f}); {t * 1e3 / B:.1f} ms/sample")
        for B in map(int, a.data_batch.split(",")):   # render + augmentation + occlusion + degradation
            options = {"--context-blur 0.5": {"context_blur": 0.5},      # train.py's data options, each against
                       "--photo-backgrounds 0.5": {"photo_backgrounds": 0.5},   # the plain path
                       "--jpeg 0.5": {"jpeg": 0.5}, "--body 0.5": {"body": 0.5},
                       "--shadows 0.5": {"shadows": 0.5}}
            streams = {k: SyntheticStream(B, seed=0, device=dev, **kw) for k, kw in options.items()}
            times = {k: timeit(lambda s=s: (next(s), sync()), 3) for k, s in streams.items()}
            stream = SyntheticStream(B, seed=0, device=dev)
            t = timeit(lambda s=stream: (next(s), sync()), 3)
            print(f"training data path (SyntheticStream, every batch freshly rendered), batch {B}: "
                  f"{B / t:.1f} samples/s; "
                  + "; ".join(f"with {k} {B / tk:.1f} (x{t / tk:.2f})" for k, tk in times.items()))
        if a.profile:                                 # where the data path's time goes, at the largest batch
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts) as prof:
                next(stream)
                sync()
            key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            print(f"\ndata path operators, batch {B}, one batch, by {key}:")
            print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))
    if shared_dir(required=False) and "video" in only:
        import tempfile
        from prn_blender.core.constants import VIDEO_SCALES, VIDEO_TURNS, VIDEO_WIDE_EVERY
        from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
        from prn_blender.core.smoothing import OneEuroSettings
        from prn_blender.core.video import iter_video
        from prn_blender.synth.clip import make_synthetic_clip
        with tempfile.TemporaryDirectory() as d:
            path, gt = make_synthetic_clip(Path(d) / "clip.avi", n_frames=40, seed=0)
            one = {"scales": VIDEO_SCALES, "turns": VIDEO_TURNS, "surround_blur": None}     # as video runs
            for w, name in zip(weights, names):
                rec = FaceReconstructor(w, device=a.device, options=InferenceOptions(**one, periphery=False))
                wide = FaceReconstructor(w, device=a.device, options=InferenceOptions(**one, periphery=True))
                for label, sm, r, every, tex in (
                        ("raw", None, rec, 0, "all"), ("one-euro", OneEuroSettings(), rec, 0, "all"),
                        (f"one-euro, wide view every {VIDEO_WIDE_EVERY} frames", OneEuroSettings(), rec,
                         VIDEO_WIDE_EVERY, "all"),
                        ((f"one-euro, wide view every {VIDEO_WIDE_EVERY} frames, texture on the first frame only "
                          "(the add-on)"), OneEuroSettings(), rec, VIDEO_WIDE_EVERY, "first"),
                        ("one-euro, wide view every frame", OneEuroSettings(), wide, 0, "all")):
                    t = time.perf_counter()
                    n = sum(1 for _ in iter_video(path, r, smoothing=sm, wide_every=every, textures=tex))
                    dt = time.perf_counter() - t
                    e2e[name, f"video {label}"] = dt * 1e3 / n
                    print(f"video end-to-end ({name}, {label}, tracking): {n / dt:.2f} fps "
                          f"({dt * 1e3 / n:.0f} ms/frame, {n} frames 256x256)")
                base = e2e[name, "video one-euro"]
                print("  against one-euro alone: " + ", ".join(f"{k[1][len('video one-euro, '):]} x{v / base:.2f}"
                                                      for k, v in e2e.items() if k[0] == name
                                                      and k[1].startswith("video one-euro, ")) + " time")
    if shared_dir(required=False) and "loop" in only:
        width, batch, steps = map(int, (a.loop or ("16,64,60" if dev.type == "cuda" else "8,4,12")).split(","))
        one, four = (bench_loop(dev, width, batch, steps, k) for k in (1, 4))
        print(f"\ntraining loop (train.py, width {width}, batch {batch}, reuse 1, steps {steps // 3}-{steps}): "
              f"one batch rendered at a time {one:.1f} samples/s | four at once {four:.1f} samples/s | "
              f"x{four / one:.2f}")
    for name in names[1:]:                   # each further model's time against the first's, same run
        print(f"\n{name} vs {names[0]}: " + ", ".join(
            f"{label} x{ms / e2e[names[0], label]:.2f} time" for (n, label), ms in e2e.items() if n == name))

if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
