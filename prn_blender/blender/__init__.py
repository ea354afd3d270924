"""Blender layer of prn_blender: registration of the add-on classes (thin bpy code over prn_blender.core)."""
from __future__ import annotations


def _classes():
    from . import operators, panel, preferences, properties
    return (*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *panel.CLASSES)


def is_registered() -> bool:
    import bpy
    return hasattr(bpy.types, "PRN_OT_reconstruct_image") and hasattr(bpy.types.Scene, "prn_face")


def register() -> None:
    import bpy
    from . import properties
    if is_registered():
        return
    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register_props()


def unregister() -> None:
    import bpy
    from . import operators, properties
    operators.stop_all()
    properties.unregister_props()
    for cls in reversed(_classes()):
        try:
            bpy.utils.unregister_class(cls)
        except RuntimeError:
            pass
