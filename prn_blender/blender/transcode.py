"""Blender as the video decoder of last resort: a clip OpenCV's FFmpeg cannot decode (AV1, for one) but Blender can
is re-encoded by Blender's sequencer into a file OpenCV reads, frame for frame, in a scene of its own. So is a clip
Blender plays at other times than OpenCV reads it (variable frame rate). Only the frame range asked for is encoded: a
long clip's copy would take minutes and gigabytes."""
from __future__ import annotations

import os
from collections.abc import Callable

import bpy

#: what the re-encoded copy is: H.264 in Matroska, perceptually lossless (x264 CRF 17), fast preset
CODEC = {"format": "MKV", "codec": "H264", "constant_rate_factor": "PERC_LOSSLESS", "ffmpeg_preset": "REALTIME"}


def transcode(path: str, out_dir: str, start: int = 0, end: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> str:
    """Re-encode the video at ``path`` into ``out_dir`` with Blender and return the new file's path: its frames
    ``start`` to ``end`` - 1 (0-based, as Blender plays the clip: its frame i is shown at scene frame i + 1; ``end``
    None or past the clip = to its end), as Blender shows them (rotation metadata applied), at the same frame rate,
    pixel values unchanged by colour management. The copy's frame 0 is the clip's frame ``start``. ``progress(done,
    total)`` is called after each frame written. Works in a temporary scene that is removed afterwards; the user's
    scenes and settings are not touched. Raises RuntimeError when Blender cannot read the file either, ValueError
    when the range holds no frame of the clip."""
    out = os.path.join(out_dir, "decoded.mkv")
    scene = bpy.data.scenes.new("prn_transcode")
    written = [0]

    def count(sc, *_):
        if sc == scene:
            written[0] += 1
            if progress is not None:
                progress(written[0], scene.frame_end - scene.frame_start + 1)
    try:
        try:
            ed = scene.sequence_editor_create()
            strips = ed.strips if hasattr(ed, "strips") else ed.sequences          # renamed in Blender 4.4
            strip = strips.new_movie("source", str(path), channel=1, frame_start=1)
        except RuntimeError as e:
            raise RuntimeError(f"Blender cannot read it either ({e})") from None
        el = strip.elements[0] if len(strip.elements) else None
        if el is None or strip.frame_final_duration < 1 or el.orig_width < 1 or el.orig_height < 1:
            raise RuntimeError("Blender cannot read it either (no frames)")
        r = scene.render
        fps = float(strip.fps)
        r.fps = max(1, round(fps))
        r.fps_base = r.fps / fps
        n = strip.frame_final_duration
        last = n if end is None else min(int(end), n)
        if not 0 <= start < last:
            raise ValueError(f"the frame range {start + 1}-{end if end is not None else n} holds no frame of the "
                             f"clip's {n} (as Blender plays it)")
        scene.frame_end, scene.frame_start = last, start + 1
        r.resolution_x, r.resolution_y, r.resolution_percentage = el.orig_width, el.orig_height, 100
        r.use_sequencer = True
        scene.view_settings.view_transform = "Standard"         # the frames' values as stored, no tone mapping
        scene.view_settings.look = "None"
        scene.view_settings.exposure, scene.view_settings.gamma = 0.0, 1.0
        r.image_settings.file_format = "FFMPEG"
        for k, v in CODEC.items():
            setattr(r.ffmpeg, k, v)
        r.ffmpeg.audio_codec = "NONE"
        r.filepath = out
        r.use_file_extension = False
        bpy.app.handlers.render_post.append(count)
        try:
            bpy.ops.render.render(animation=True, scene=scene.name)
        finally:
            bpy.app.handlers.render_post.remove(count)
    finally:
        bpy.data.scenes.remove(scene)
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        raise RuntimeError("Blender wrote no frames")
    return out
