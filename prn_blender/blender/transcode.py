"""Blender as the video decoder of last resort: a clip OpenCV's FFmpeg cannot decode (AV1, for one) but Blender can
is re-encoded by Blender's sequencer into a file OpenCV reads, frame for frame, in a scene of its own."""
from __future__ import annotations

import os

import bpy

#: what the re-encoded copy is: H.264 in Matroska, perceptually lossless (x264 CRF 17), fast preset
CODEC = {"format": "MKV", "codec": "H264", "constant_rate_factor": "PERC_LOSSLESS", "ffmpeg_preset": "REALTIME"}


def transcode(path: str, out_dir: str) -> str:
    """Re-encode the video at ``path`` into ``out_dir`` with Blender and return the new file's path: every frame, as
    Blender shows it (its rotation metadata applied), at the same frame rate, pixel values unchanged by colour
    management. Works in a temporary scene that is removed afterwards; the user's scenes and settings are not
    touched. Raises RuntimeError when Blender cannot read the file either."""
    out = os.path.join(out_dir, "decoded.mkv")
    scene = bpy.data.scenes.new("prn_transcode")
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
        scene.frame_start, scene.frame_end = 1, strip.frame_final_duration
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
        bpy.ops.render.render(animation=True, scene=scene.name)
    finally:
        bpy.data.scenes.remove(scene)
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        raise RuntimeError("Blender wrote no frames")
    return out
