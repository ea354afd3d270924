"""A short synthetic face video with known 68-landmark truth, for testing video tracking/smoothing end to end.

One subject (identity, appearance, lighting, background of a first sampled parameter set) moves smoothly from the
pose/expression of that set to the pose/expression of a second one (cosine ease), with a small in-plane drift of
the whole frame. Frames are rendered directly in the 256x256 crop space and written as an MJPG .avi.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

_MOVING = ("expression", "yaw", "pitch", "roll")


def clip_params(n_frames: int, seed: int, names: tuple, max_yaw: float = 35.0) -> tuple[dict, np.ndarray]:
    """Per-frame parameter batch (B = n_frames) + the per-frame image drift (F,2) in pixels."""
    from .sampler import sample_params
    g = torch.Generator().manual_seed(int(seed))
    a = sample_params(1, names, g, max_yaw=max_yaw)
    b = sample_params(1, names, g, max_yaw=max_yaw)
    s = torch.linspace(0.0, 1.0, n_frames) if n_frames > 1 else torch.zeros(1)
    w = 0.5 - 0.5 * torch.cos(math.pi * s)                           # ease in/out: zero velocity at the ends
    p = {}
    for k, v in a.items():
        if k in _MOVING:
            shape = (n_frames,) + (1,) * (v.dim() - 1)
            p[k] = v * (1 - w.view(shape)) + b[k] * w.view(shape)
        else:
            p[k] = v.expand(n_frames, *v.shape[1:]).clone()
    p["persp_dist"] = torch.full((n_frames,), math.inf)            # weak perspective: stable landmark truth
    rng = np.random.default_rng(seed)
    phase = rng.random(2) * 2 * math.pi
    tt = np.linspace(0, 2 * math.pi, n_frames)
    drift = np.stack([8 * np.sin(tt + phase[0]), 6 * np.sin(0.7 * tt + phase[1])], 1)
    return p, drift


def make_synthetic_clip(out_path, n_frames: int = 24, seed: int = 0, fps: int = 24, max_yaw: float = 35.0,
                        batch: int = 8, ict=None, renderer=None) -> tuple[Path, np.ndarray]:
    """Render ``n_frames`` frames (256x256) to ``out_path`` (MJPG .avi). Returns (path, gt landmarks (F,68,3) in
    image pixels: x right, y down, z depth in pixels as the renderer's crop space)."""
    from .ict import load_ict
    from .render import FaceRenderer
    ict = ict if ict is not None else load_ict()
    renderer = renderer if renderer is not None else FaceRenderer(ict)
    names = ict.expression_names
    p, drift = clip_params(n_frames, seed, tuple(names), max_yaw)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = 256
    vw = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (size, size))
    if not vw.isOpened():
        raise RuntimeError(f"cannot open a video writer for {out_path}")
    gts = []
    try:
        with torch.no_grad():
            for i0 in range(0, n_frames, batch):
                sl = slice(i0, min(i0 + batch, n_frames))
                out = renderer.render({k: v[sl] for k, v in p.items()})
                imgs = (out.image.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
                kpts = out.kpt.cpu().numpy().astype(np.float64)
                for j, (img, kpt) in enumerate(zip(imgs, kpts)):
                    dx, dy = drift[i0 + j]
                    m = np.float32([[1, 0, dx], [0, 1, dy]])
                    bgr = cv2.warpAffine(np.ascontiguousarray(img[..., ::-1]), m, (size, size),
                                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                    vw.write(bgr)
                    kpt = kpt.copy()
                    kpt[:, 0] += dx
                    kpt[:, 1] += dy
                    gts.append(kpt)
    finally:
        vw.release()
    return out_path, np.stack(gts).astype(np.float32)
