"""Crop conventions (PRNet api.py / 3DDFA_V2): detector box -> crop, landmarks -> crop, warp and un-crop."""
from __future__ import annotations

import cv2
import numpy as np

from .constants import BOX_CENTER_SHIFT, BOX_CROP_SCALE, KPT_CROP_SCALE, RESOLUTION
from .result import CropTransform


def crop_from_box(box, shift: float = BOX_CENTER_SHIFT, scale: float = BOX_CROP_SCALE) -> CropTransform:
    """Detector box (x0, y0, x1, y1) in image pixels -> crop: centre moved down by shift*size, side scale*size."""
    l, t, r, b = map(float, box[:4])
    old = (r - l + b - t) / 2
    return CropTransform(center=(r - (r - l) / 2, b - (b - t) / 2 + shift * old), size=float(int(old * scale)),
                         resolution=RESOLUTION)


def crop_from_landmarks(pts: np.ndarray, scale: float = KPT_CROP_SCALE, angle: float = 0.0) -> CropTransform:
    """(K,2+) landmarks in image pixels -> crop of side scale * mean box side (at least 1 pixel), centred on their
    box; with ``angle`` (degrees, CropTransform.angle) the crop is turned and the box taken in its turned frame."""
    axes = CropTransform((0.0, 0.0), 1.0, angle=angle).axes
    p = np.asarray(pts, np.float64)[:, :2] @ axes          # coordinates along the crop's axes
    lo, hi = p.min(0), p.max(0)
    old = ((hi - lo).sum()) / 2
    return CropTransform(center=tuple((axes @ ((lo + hi) / 2)).tolist()), size=float(max(int(old * scale), 1)),
                         resolution=RESOLUTION, angle=float(angle))


def crop_from_roi(roi) -> CropTransform:
    """3DDFA-style square roi box [sx, sy, ex, ey] used as the crop itself."""
    sx, sy, ex, ey = map(float, roi[:4])
    return CropTransform(center=((sx + ex) / 2, (sy + ey) / 2), size=float(max(ex - sx, ey - sy)),
                         resolution=RESOLUTION)


def turn_crop(crop: CropTransform, turns: int, shape) -> CropTransform:
    """A crop of ``np.rot90(image, turns)`` as the same crop of ``image`` itself ((H, W) = ``shape[:2]``): its centre
    mapped back and its angle turned by 90 deg a quarter turn."""
    k = turns % 4
    if k == 0:
        return crop
    h, w = shape[:2]
    x, y = crop.center
    center = {1: (w - 1 - y, x), 2: (w - 1 - x, h - 1 - y), 3: (y, h - 1 - x)}[k]
    return CropTransform((float(center[0]), float(center[1])), crop.size, crop.resolution,
                         crop.angle + {1: 90.0, 2: 180.0, 3: -90.0}[k])


def warp(image: np.ndarray, crop: CropTransform) -> np.ndarray:
    """Cut the 256x256 crop out of an (H,W,C) float image (zero outside)."""
    return cv2.warpAffine(image, crop.matrix, (crop.resolution, crop.resolution), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def uncrop_position_map(pos: np.ndarray, crop: CropTransform) -> np.ndarray:
    """(256,256,3) crop-space position map -> image space (x, y pixels; z divided by the crop scale)."""
    return crop.to_image(pos.reshape(-1, 3)).reshape(pos.shape).astype(np.float32)
