"""Add-on preferences. ``bl_idname`` is the top package (``prn_blender`` from source,
``bl_ext.<repo>.prn_blender`` when installed as an extension)."""
from __future__ import annotations

from typing import NamedTuple

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..core.constants import PHOTO_TURNS, RESOLUTION, TEXTURE_MAX

ADDON_ID = (__package__ or "prn_blender").rsplit(".blender", 1)[0]
# the fixed texture sides: 256 (the position map's) doubled up to TEXTURE_MAX
TEXTURE_SIDES = tuple(RESOLUTION << k for k in range((TEXTURE_MAX // RESOLUTION).bit_length()))


class Preferences(NamedTuple):
    """The add-on preferences as core options: device 'auto'|'cuda'|'cpu', weights path (None: the shipped model),
    mirror averaging, multi-view averaging for photos, landmark re-crop of detected faces, its blurred-surround views
    for photos, the refiner (core.refine), and the UV texture's side in texels (None: as fine as the photo,
    core.reconstruct.texture_side)."""
    device: str = "auto"
    weights: str | None = None
    mirror_average: bool = True
    multi_view: bool = True
    recrop: bool = True
    surround_blur: bool = True
    refine: bool = False
    texture_size: int | None = None


_DEFAULT = Preferences()       # the properties below start from these too


class PRN_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    device: EnumProperty(name="Device", default=_DEFAULT.device.upper(), items=[
        ("AUTO", "Auto", "CUDA when available, else CPU"), ("CUDA", "CUDA", "NVIDIA GPU"), ("CPU", "CPU", "CPU")])
    weights_path: StringProperty(name="Weights", subtype="FILE_PATH",
                                 description="Weights file (empty = the shipped default model)")
    mirror_average: BoolProperty(name="Mirror Averaging", default=_DEFAULT.mirror_average,
                                 description="Also run the network on the mirrored crop and average (twice the network "
                                             "time, lower landmark error)")
    multi_view: BoolProperty(name="Multi-View Averaging (Photos)", default=_DEFAULT.multi_view,
                             description=f"For photos, also run each crop turned {max(PHOTO_TURNS):g} degrees "
                                         "either way and average (three times the network time, lower landmark "
                                         "error). Video always runs one view")
    recrop: BoolProperty(name="Landmark Re-Crop", default=_DEFAULT.recrop,
                         description="Run a detected face again, cropped from its first landmarks (a quarter more "
                                     "network time on photos, twice with Blurred Surround; twice on the frames where "
                                     "video re-detects; the detector's own crops give a larger landmark error)")
    surround_blur: BoolProperty(name="Blurred Surround (Photos)", default=_DEFAULT.surround_blur,
                                description="For photos, the re-crop also runs its views with the surround blurred "
                                            "outside the first landmarks and takes all but the jaw line from them "
                                            "(about 1.6x the network time, lower landmark error on real photos). "
                                            "Video never does")
    refine: BoolProperty(name="Refine Mouth", default=_DEFAULT.refine,
                         description="Redraw the mouth from a close-up patch of the photo or frame with the shipped "
                                     "refiner network, so smiles and puckers show; off by default: its model card "
                                     "(REFINER_CARD.md) has what it changes")
    texture_size: EnumProperty(
        name="Texture Size", default="AUTO",
        items=[("AUTO", "Auto", (f"As fine as the photo or frame: the smallest side of "
                                 f"{', '.join(map(str, TEXTURE_SIDES))} texels at which a texel spans at most one "
                                 "pixel of it"))]
        + [(str(t), f"{t} x {t}", f"Always {t} x {t} texels") for t in TEXTURE_SIDES],
        description="Side of the face's UV texture in texels (a video's mesh gets the texture of its first face)")

    def draw(self, context):
        col = self.layout.column()
        col.prop(self, "device")
        col.prop(self, "weights_path")
        col.prop(self, "mirror_average")
        col.prop(self, "multi_view")
        col.prop(self, "recrop")
        col.prop(self, "surround_blur")
        col.prop(self, "refine")
        col.prop(self, "texture_size")


def get_preferences(context=None) -> Preferences:
    """The add-on's Preferences; the defaults when the add-on is not enabled as such."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    prefs = getattr(addon, "preferences", None) if addon else None
    if prefs is None:
        return _DEFAULT
    return Preferences(prefs.device.lower(), bpy.path.abspath(prefs.weights_path) if prefs.weights_path else None,
                       bool(prefs.mirror_average), bool(prefs.multi_view), bool(prefs.recrop),
                       bool(prefs.surround_blur), bool(prefs.refine),
                       None if prefs.texture_size == "AUTO" else int(prefs.texture_size))


CLASSES = (PRN_AP_preferences,)
