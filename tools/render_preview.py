"""Headless preview: reconstruct a photo with the add-on operator, render the face mesh from the matching camera
(Workbench; Cycles CPU at a few samples as a fallback) with a transparent film, and composite it over the photo.
The 68 landmark empties are projected through the same camera and drawn as dots.

    python tools/render_preview.py IMAGE --out PREVIEW.png [--alpha 0.6] [--engine auto|workbench|cycles]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="prn_preview_user_"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAX_SIZE = 512


def _render(bpy, engine: str, path: str) -> None:
    scene = bpy.context.scene
    r = scene.render
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.filepath = path
    scene.view_settings.view_transform = "Standard"
    if engine == "workbench":
        r.engine = "BLENDER_WORKBENCH"
        sh = scene.display.shading
        sh.light = "STUDIO"
        sh.color_type = "TEXTURE"
        sh.show_cavity = False
    else:
        r.engine = "CYCLES"
        scene.cycles.device = "CPU"
        scene.cycles.samples = 4
        scene.cycles.use_denoising = False
        world = bpy.data.worlds.new("preview") if scene.world is None else scene.world
        scene.world = world
        try:
            world.use_nodes = True
            world.node_tree.nodes["Background"].inputs["Strength"].default_value = 1.5
        except (KeyError, AttributeError):
            pass
    bpy.ops.render.render(write_still=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--out", required=True)
    ap.add_argument("--alpha", type=float, default=0.6, help="opacity of the rendered mesh over the photo")
    ap.add_argument("--engine", default="auto", choices=("auto", "workbench", "cycles"))
    a = ap.parse_args(argv)

    import cv2
    import numpy as np
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from prn_blender.blender import register
    from prn_blender.blender import scene as sc

    register()
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    src = os.path.abspath(a.image)
    res = bpy.ops.prn.reconstruct_image(filepath=src)
    if "FINISHED" not in res:
        print(f"error: reconstruction failed: {res}", file=sys.stderr)
        return 1
    coll = next(c for c in bpy.data.collections if c.get("prn_source"))
    objs = sc.objects_by_role(coll)
    scene = bpy.context.scene
    photo = cv2.imread(src, cv2.IMREAD_COLOR)
    h0, w0 = photo.shape[:2]
    f = min(1.0, MAX_SIZE / max(w0, h0))
    w, h = max(1, round(w0 * f)), max(1, round(h0 * f))
    scene.render.resolution_x, scene.render.resolution_y = w, h
    scene.render.resolution_percentage = 100
    for o in objs["landmarks"] + [objs["root"], objs["head"]]:
        o.hide_render = True

    tmp = tempfile.mkdtemp(prefix="prn_preview_")
    rgba_path = os.path.join(tmp, "mesh.png")
    engines = ["workbench", "cycles"] if a.engine == "auto" else [a.engine]
    used, err = None, None
    for eng in engines:
        try:
            _render(bpy, eng, rgba_path)
            if os.path.isfile(rgba_path):
                used = eng
                break
        except Exception as e:  # noqa: BLE001
            err = e
            print(f"note: {eng} render failed: {str(e).strip().splitlines()[0] if str(e).strip() else e}",
                  file=sys.stderr)
    if used is None:
        print(f"error: no engine could render ({err})", file=sys.stderr)
        return 1

    rgba = cv2.imread(rgba_path, cv2.IMREAD_UNCHANGED)
    bg = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rgba.shape[:2] != (h, w):
        rgba = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_NEAREST)
    al = (rgba[..., 3:4].astype(np.float32) / 255.0) * a.alpha
    out = bg * (1 - al) + rgba[..., :3].astype(np.float32) * al
    out = np.clip(out, 0, 255).astype(np.uint8)
    # the landmark empties projected through the scene camera (green dots)
    cam = scene.camera
    bpy.context.view_layer.update()
    n_in = 0
    for o in objs["landmarks"]:
        v = world_to_camera_view(scene, cam, o.matrix_world.translation)
        x, y = v.x * w, (1.0 - v.y) * h
        if 0 <= x < w and 0 <= y < h:
            n_in += 1
        cv2.circle(out, (int(round(x)), int(round(y))), max(1, w // 200), (0, 255, 0), -1, cv2.LINE_AA)
    # the camera check: projected empties vs the core's own landmarks (image pixels, scaled to the render size)
    from prn_blender.blender.operators import get_reconstructor
    lm_core = np.asarray(get_reconstructor(bpy.context)(src)[0].landmarks, np.float64)[:, :2] * f
    proj = []
    for o in objs["landmarks"]:
        v = world_to_camera_view(scene, cam, o.matrix_world.translation)
        proj.append((v.x * w, (1.0 - v.y) * h))
    dev = float(np.abs(np.array(proj) - lm_core).max())
    print(f"projected landmark empties vs core landmarks: max deviation {dev:.3f} px")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(a.out, out)
    cov = float((rgba[..., 3] > 0).mean())
    print(f"{a.out}: {w}x{h}, engine {used}, mesh covers {cov:.1%} of the frame, {n_in}/68 landmarks inside")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import shutil
        import bpy
        shutil.rmtree(bpy.app.tempdir, ignore_errors=True)
    except Exception:  # noqa: BLE001
        pass
    os._exit(code)
