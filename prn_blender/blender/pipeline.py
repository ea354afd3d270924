"""Headless pipeline: image or video -> .blend through the add-on's own operators (``python -m prn_blender blend``)."""
from __future__ import annotations

import os
import sys

from ..core.image_io import IMAGE_SUFFIXES

VIDEO_EXTS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}


def is_video(path) -> bool:
    ext = os.path.splitext(str(path))[1].lower()
    if ext in VIDEO_EXTS:
        return True
    if ext in IMAGE_SUFFIXES:
        return False
    try:
        import cv2
        cap = cv2.VideoCapture(str(path))
        try:
            return cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 1
        finally:
            cap.release()
    except Exception:  # noqa: BLE001
        return False


def parse_frames(spec):
    """'START:END:STEP' (each part optional, END inclusive, empty END = to the end) -> (start, end or -1, step)."""
    if not spec:
        return 0, -1, 1
    parts = (str(spec).split(":") + ["", "", ""])[:3]
    start = int(parts[0]) if parts[0] else 0
    end = int(parts[1]) if parts[1] else -1
    step = int(parts[2]) if parts[2] else 1
    if start < 0 or step < 1 or (end >= 0 and end < start):
        raise ValueError(f"bad frame range {spec!r} (START:END:STEP)")
    return start, end, step


def parse_smoothing(spec):
    """None -> default (on), 'off' -> disabled, 'MIN_CUTOFF,BETA' -> on with those values."""
    if spec is None or spec == "" or str(spec).lower() in ("on", "default"):
        return True, None, None
    if str(spec).lower() in ("off", "none", "0", "false"):
        return False, None, None
    a, b = (float(v) for v in str(spec).split(","))
    return True, a, b


def run_blend(input_path, out_blend, frames=None, rig=False, smoothing=None, weights=None, wide_view=True,
              face: int = 1) -> int:
    """Build a .blend from a photo or a video with the add-on operators (``wide_view``: video frames get the wide
    periphery view on key frames, the scene's Wide View setting; ``face``: which face, 1 = the largest, the scene's
    Face setting). Returns 0, or 1 with a one-line error on stderr."""
    try:
        start, end, step = parse_frames(frames)
        sm_on, min_cutoff, beta = parse_smoothing(smoothing)
        if int(face) < 1:
            raise ValueError(f"--face counts from 1 (the largest face), got {face}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not os.path.isfile(str(input_path)):
        print(f"error: input not found: {input_path}", file=sys.stderr)
        return 1
    import bpy
    from . import is_registered, register
    if not is_registered():
        register()
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    out = os.path.abspath(str(out_blend))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    s = bpy.context.scene.prn_face
    s.rig = bool(rig)
    s.wide_view = bool(wide_view)
    s.face = int(face)
    s.frame_start, s.frame_end, s.frame_step = start, end, step
    s.smoothing = sm_on
    if min_cutoff is not None:
        s.min_cutoff, s.beta = min_cutoff, beta
    src = os.path.abspath(str(input_path))
    existed = os.path.exists(out)
    # a scratch .blend beside the output (so caches and relative paths sit next to it); the user's existing
    # OUT is only replaced once the reconstruction succeeded
    scratch = os.path.join(os.path.dirname(out), f".prn_tmp_{os.path.basename(out)}")
    try:
        bpy.ops.wm.save_as_mainfile(filepath=scratch)
        if is_video(src):
            res = bpy.ops.prn.reconstruct_video(filepath=src, weights=weights or "")
        else:
            res = bpy.ops.prn.reconstruct_image(filepath=src, weights=weights or "")
        if "FINISHED" not in res:
            raise RuntimeError(f"reconstruction cancelled: {res}")
        bpy.ops.wm.save_as_mainfile(filepath=out)
    except RuntimeError as e:     # operator ERROR reports surface here as "Error: ..." exceptions
        msg = str(e).strip().splitlines()
        msg = msg[0] if msg else type(e).__name__
        print(f"error: {msg.removeprefix('Error: ')}", file=sys.stderr)
        if not existed:                      # no half-built .blend left behind
            for p in (out, out + "1"):
                if os.path.exists(p):
                    os.remove(p)
        return 1
    finally:
        for p in (scratch, scratch + "1"):
            if os.path.exists(p):
                os.remove(p)
    print(out)
    return 0
