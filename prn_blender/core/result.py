"""Typed results of the reconstruction API. Image frame everywhere: pixels of the input image, x right, y down,
z = depth toward the camera in the same pixel units (larger z = nearer), as PRN's un-cropped position maps."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CropTransform:
    """Square crop of side ``size`` image pixels centred at ``center`` (x, y), mapped onto the 256 crop so that its
    corners go to 0 and 255 (PRNet convention). ``angle`` (degrees) turns the crop about its centre: its x axis
    points along the image direction (cos angle, sin angle), y down, so a face whose eye line is at ``angle`` in the
    image is upright in the crop (a roll-aligned crop); 0 = axis-aligned. ``matrix`` is the 2x3 image -> crop
    affine; z (depth) is only scaled."""
    center: tuple[float, float]
    size: float
    resolution: int = 256
    angle: float = 0.0

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return (self.resolution - 1) / self.size

    @property
    def axes(self) -> np.ndarray:
        """(2,2) columns = the crop's x and y axes in image coordinates."""
        a = math.radians(self.angle)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s], [s, c]])

    @property
    def matrix(self) -> np.ndarray:
        A = self.scale * self.axes.T
        t = (self.resolution - 1) / 2 - A @ np.asarray(self.center, np.float64)
        return np.concatenate([A, t[:, None]], 1)

    def resized(self, k: float) -> CropTransform:
        """The same crop with its side multiplied by ``k`` (same centre and angle)."""
        return dataclasses.replace(self, size=self.size * k)

    def turned(self, degrees: float) -> CropTransform:
        """The same crop turned by ``degrees`` more about its centre (same side): the face in it turns the other
        way."""
        return dataclasses.replace(self, angle=self.angle + degrees)

    def to_crop(self, pts: np.ndarray) -> np.ndarray:
        """(...,2|3) image coords -> crop coords (z multiplied by the scale)."""
        out = np.array(pts, np.float64, copy=True)
        m = self.matrix
        out[..., :2] = np.asarray(pts)[..., :2] @ m[:, :2].T + m[:, 2]
        if out.shape[-1] > 2:
            out[..., 2] = pts[..., 2] * self.scale
        return out

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        """(...,2|3) crop coords -> image coords; z is divided by the scale (PRNet un-crop)."""
        out = np.array(pts, np.float64, copy=True)
        m = self.matrix
        out[..., :2] = (np.asarray(pts)[..., :2] - m[:, 2]) @ (self.axes / self.scale).T
        if out.shape[-1] > 2:
            out[..., 2] = pts[..., 2] / self.scale
        return out


@dataclass(frozen=True)
class HeadPose:
    """Similarity from the layout's canonical shape (cm; x to the subject's left, y up, z out of the face) to the
    face in a right-handed image-aligned frame (x right, y UP, z toward the camera; image pixels):
    ``p = scale * rotation @ c + translation``, then image (x, y, z) = (p.x, -p.y, p.z).
    Angles in degrees with rotation = Rz(roll) @ Rx(pitch) @ Ry(yaw); yaw > 0: subject turns to its left."""
    rotation: np.ndarray        # (3,3)
    translation: np.ndarray     # (3,)
    scale: float
    yaw: float
    pitch: float
    roll: float

    def as_dict(self) -> dict:
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll, "scale": self.scale,
                "rotation": np.asarray(self.rotation).tolist(), "translation": np.asarray(self.translation).tolist()}


@dataclass(frozen=True, eq=False)
class FaceResult:
    """One reconstructed face.

    position_map: (256,256,3) float32 position map already in image space (x, y pixels, z depth pixels).
    vertices: (N,3) float32 image space; triangles (T,3) int32; uvs (N,2) float32 (v up).
    landmarks: (68,3) float32 iBUG-68 in image space. colors: (N,3) float32 RGB in [0,1] sampled from the image.
    texture: (T,T,3) float32 RGB UV texture (row 0 = top = v 1), T = 256 or more for a high-resolution photo
    (InferenceOptions.texture_size, reconstruct.texture_side); texture_mask (T,T) bool = texel's surface point
    visible in the photo (z-buffer test). depth: (H,W) float32 depth image (nan off the face).
    crop: the crop used; confidence in [0,1]; layout: layout name; image_size (w, h).
    wide_view: (256,256,3) float32 un-cropped position map (image space) of the wide periphery view when this result
    ran it, else None (video carries it to the frames after: FaceReconstructor's ``carry``).
    """
    position_map: np.ndarray
    vertices: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray
    landmarks: np.ndarray
    pose: HeadPose
    colors: np.ndarray
    texture: np.ndarray
    texture_mask: np.ndarray
    depth: np.ndarray
    crop: CropTransform
    confidence: float
    layout: str
    image_size: tuple[int, int]
    timings: dict = field(default_factory=dict)
    wide_view: np.ndarray | None = None

    def landmarks_json(self) -> dict:
        """``{"landmarks68": [[x,y,z]x68], "pose": {...}, "image_size": [w,h]}`` in image pixels, y down."""
        return {"landmarks68": np.asarray(self.landmarks, float).round(3).tolist(), "pose": self.pose.as_dict(),
                "image_size": list(self.image_size), "layout": self.layout, "confidence": self.confidence}


def largest_first(faces) -> list:
    """FaceResults ordered by the area of their 68 landmarks' box in the image, largest first: how the add-on's Face
    setting counts the faces of a photo or a video (the detector's own order is by score, which a small face in the
    background can win)."""
    def area(f):
        lm = np.asarray(f.landmarks, np.float64)[:, :2]
        return float(np.prod(np.ptp(lm, axis=0)))
    return sorted(faces or [], key=area, reverse=True)
