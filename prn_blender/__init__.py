"""prn_blender: photo/video of a face -> animation-ready 3D face (Blender 4.2+ extension; see blender_manifest)."""


def register():
    from .blender import register as r
    r()


def unregister():
    from .blender import unregister as u
    u()
