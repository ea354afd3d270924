"""Head pose from a reconstructed face: similarity (Umeyama) from the layout's canonical shape."""
from __future__ import annotations

import math

import numpy as np

from .result import HeadPose


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Least-squares similarity dst ~ s R src + t for (N,3) arrays; returns (s, R, t, rms residual)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    U, S, Vt = np.linalg.svd(cov)
    d = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[2, 2] = -1
    R = U @ d @ Vt
    var = (a ** 2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ d) / var)
    t = md - s * R @ ms
    res = float(np.sqrt(((dst - (s * src @ R.T + t)) ** 2).sum(1).mean()))
    return s, R, t, res


def euler_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees for R = Rz(roll) @ Rx(pitch) @ Ry(yaw)."""
    pitch = math.asin(max(-1.0, min(1.0, R[2, 1])))
    yaw = math.atan2(-R[2, 0], R[2, 2])
    roll = math.atan2(-R[0, 1], R[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def estimate_pose(vertices: np.ndarray, canonical: np.ndarray, weights_idx: np.ndarray | None = None
                  ) -> tuple[HeadPose, float]:
    """Pose of image-space vertices (x right, y down, z toward camera) relative to ``canonical``; also returns the
    fit residual relative to the face size (0 = perfectly face-shaped)."""
    idx = weights_idx if weights_idx is not None else slice(None)
    dst = vertices[idx].astype(np.float64) * np.array([1.0, -1.0, 1.0])
    src = canonical[idx].astype(np.float64)
    s, R, t, res = umeyama(src, dst)
    yaw, pitch, roll = euler_from_rotation(R)
    size = np.sqrt(((src - src.mean(0)) ** 2).sum(1).mean()) * s
    return HeadPose(rotation=R, translation=t, scale=s, yaw=yaw, pitch=pitch, roll=roll), res / max(size, 1e-9)
