"""THE conversion from the image frame to Blender (numpy only, no bpy: importable and testable anywhere).

Image frame (core.result): pixels of the input image, x right, y down, z = depth toward the camera (pixels).

Blender convention (the "Front" view of Blender): the camera sits on the -Y side and looks along +Y, with X right
and Z up. With ``k`` metres per pixel and an image of ``w x h`` pixels::

    X = (x - w/2) * k        # image centre on the Z axis
    Y = -z * k               # nearer the camera = more negative Y
    Z = (h/2 - y) * k        # image y down -> Blender Z up

An orthographic camera on -Y with ``ortho_scale = max(w, h) * k`` and a ``w x h`` render resolution shows exactly the
photo (its background image) with every reconstructed point over its pixel. The default ``k`` makes the face its real
size: the layout's canonical shape is in centimetres and the head pose scale is pixels per centimetre, so
``k = 0.01 / pose.scale`` metres per pixel.
"""
from __future__ import annotations

import math

import numpy as np

#: fallback metres per pixel when no head pose scale is known
DEFAULT_METRES_PER_PIXEL = 0.001

#: linear part of the map from the image-aligned y-UP frame (x right, y up, z toward camera) to Blender (= Rx(+90 deg))
UP_FRAME_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def metres_per_pixel_for(pose_scale: float | None) -> float:
    """Metres per image pixel that give the face its real size (canonical shape in cm, pose scale in px/cm)."""
    if pose_scale is None or not np.isfinite(pose_scale) or pose_scale <= 0:
        return DEFAULT_METRES_PER_PIXEL
    return 0.01 / float(pose_scale)


def image_to_blender(points, image_size, metres_per_pixel: float = DEFAULT_METRES_PER_PIXEL) -> np.ndarray:
    """(...,3) image-frame points (x right, y down, z toward camera; pixels) -> (...,3) Blender metres (float64)."""
    p = np.asarray(points, np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must end with 3 coordinates, got shape {p.shape}")
    w, h = float(image_size[0]), float(image_size[1])
    k = float(metres_per_pixel)
    out = np.empty(p.shape, np.float64)
    out[..., 0] = (p[..., 0] - w / 2.0) * k
    out[..., 1] = -p[..., 2] * k
    out[..., 2] = (h / 2.0 - p[..., 1]) * k
    return out


def pose_to_blender(rotation, translation, scale, image_size, metres_per_pixel: float) -> np.ndarray:
    """(4,4) Blender world matrix of the head (core.result.HeadPose: ``p = s R c + t`` in the y-up image frame, image
    = (p.x, -p.y, p.z)). Maps canonical centimetres to Blender metres consistently with :func:`image_to_blender`:
    ``M @ [c, 1] == image_to_blender((p.x, -p.y, p.z))``."""
    w, h = float(image_size[0]), float(image_size[1])
    k = float(metres_per_pixel)
    A = UP_FRAME_TO_BLENDER
    m = np.eye(4)
    m[:3, :3] = k * float(scale) * A @ np.asarray(rotation, np.float64)
    m[:3, 3] = k * A @ np.asarray(translation, np.float64) + np.array([-w / 2.0 * k, 0.0, h / 2.0 * k])
    return m


def camera_params(image_size, metres_per_pixel: float, depth_px: float | None = None) -> dict:
    """Orthographic camera that lines up with the photo: on the -Y side looking along +Y, Z up, centred on the image.
    ``depth_px``: largest image-frame z of the scene (to keep it inside the clipping range)."""
    w, h = int(image_size[0]), int(image_size[1])
    k = float(metres_per_pixel)
    size = max(w, h) * k
    near = max(float(depth_px or 0.0), float(max(w, h))) * k
    dist = near + size
    return {"location": (0.0, -dist, 0.0), "rotation_euler": (math.pi / 2.0, 0.0, 0.0), "ortho_scale": size,
            "resolution": (w, h), "clip_start": max(size * 1e-3, 1e-4), "clip_end": dist + 4.0 * near + size}
