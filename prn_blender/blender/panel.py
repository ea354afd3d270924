"""3D View sidebar panel "Reconstruct Face" (tab "Face")."""
from __future__ import annotations

import bpy


class PRN_PT_reconstruct(bpy.types.Panel):
    bl_label = "Reconstruct Face"
    bl_idname = "PRN_PT_reconstruct"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Face"

    def draw(self, context):
        s = context.scene.prn_face
        layout = self.layout
        box = layout.box()
        box.label(text="Image", icon="IMAGE_DATA")
        box.prop(s, "image_path", text="")
        op = box.operator("prn.reconstruct_image", icon="USER")
        op.filepath = s.image_path
        box = layout.box()
        box.label(text="Video", icon="FILE_MOVIE")
        box.prop(s, "video_path", text="")
        row = box.row(align=True)
        row.prop(s, "frame_start")
        row.prop(s, "frame_end")
        row.prop(s, "frame_step")
        box.prop(s, "smoothing")
        sub = box.column(align=True)
        sub.active = s.smoothing
        sub.prop(s, "min_cutoff")
        sub.prop(s, "beta")
        box.prop(s, "wide_view")
        box.prop(s, "mesh_mode")
        if s.mesh_mode == "AUTO":
            box.prop(s, "shape_key_max_frames")
        from .operators import video_running
        running = video_running()
        op = box.operator("prn.reconstruct_video", text="Stop" if running else "Reconstruct Video",
                          icon="CANCEL" if running else "SEQUENCE")
        op.filepath = s.video_path
        col = layout.column()
        col.prop(s, "face")
        col.prop(s, "metres_per_pixel")
        col.prop(s, "rig")
        row = col.row(align=True)
        row.operator("prn.generate_rig", icon="ARMATURE_DATA")
        row.operator("prn.bake_rig", icon="KEYINGSET")


CLASSES = (PRN_PT_reconstruct,)
