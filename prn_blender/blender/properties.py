"""Scene settings of the add-on (``scene.prn_face``)."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..core.constants import VIDEO_WIDE_EVERY


class PRN_PG_settings(bpy.types.PropertyGroup):
    image_path: StringProperty(name="Image", subtype="FILE_PATH", description="Photo of a face")
    face: IntProperty(name="Face", default=1, min=1, soft_max=8,
                      description="Which face to build when the photo or video shows several: 1 = the largest, "
                                  "2 = the next largest, ... (a video follows the face it picks at its first "
                                  "detection). Each face number of a source is built, and rebuilt, on its own")
    video_path: StringProperty(name="Video", subtype="FILE_PATH", description="Video of a face")
    frame_start: IntProperty(name="Start", default=0, min=0, description="First video frame (0-based)")
    frame_end: IntProperty(name="End", default=-1, min=-1, description="Last video frame (-1 = to the end)")
    frame_step: IntProperty(name="Step", default=1, min=1, description="Process every n-th frame")
    smoothing: BoolProperty(name="Smoothing", default=True, description="One Euro filter over the tracked face")
    min_cutoff: FloatProperty(name="Min Cutoff", default=1.0, min=0.001, soft_max=10.0,
                              description="One Euro minimum cutoff (Hz): lower = smoother when still")
    beta: FloatProperty(name="Beta", default=0.05, min=0.0, soft_max=2.0,
                        description="One Euro speed coefficient: higher = less lag when moving")
    mesh_mode: EnumProperty(name="Mesh Animation", default="AUTO", items=[
        ("AUTO", "Auto", "Shape keys up to the threshold, a mesh cache beyond"),
        ("SHAPE_KEYS", "Shape Keys", "One shape key per frame, stored in the .blend"),
        ("MESH_CACHE", "Mesh Cache", "PC2 point cache file next to the .blend + Mesh Cache modifier")])
    shape_key_max_frames: IntProperty(name="Shape Key Limit", default=250, min=1,
                                      description="Auto mode: clips with more frames use a mesh cache")
    metres_per_pixel: FloatProperty(name="Metres/Pixel", default=0.0, min=0.0, precision=6,
                                    description="Scale of the reconstruction (0 = real size from the head pose)")
    wide_view: BoolProperty(name="Wide View (Forehead, Neck)", default=True,
                            description=f"Every {VIDEO_WIDE_EVERY} frames also run the crop un-zoomed (wider) and take "
                                        "the forehead, ears and neck from it, carried to the frames between, as "
                                        "photos do (about a quarter more time per frame; the landmarks do not change)")
    rig: BoolProperty(name="Generate Rig", default=False, description="Also build the face armature")


CLASSES = (PRN_PG_settings,)


def register_props() -> None:
    bpy.types.Scene.prn_face = bpy.props.PointerProperty(type=PRN_PG_settings)


def unregister_props() -> None:
    if hasattr(bpy.types.Scene, "prn_face"):
        del bpy.types.Scene.prn_face
