"""Pure numpy/torch/OpenCV core of prn_blender. Never imports bpy."""
