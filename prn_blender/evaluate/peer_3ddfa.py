"""3DDFA_V2 MobileNetV1 x0.5 (120x120, 62 params) re-implemented in PyTorch: the peer for the evaluation.

Loads ``peers/3ddfa-v2/mb05_120x120.pth`` (3DDFA_V2's released weights), ``param_mean_std_62d_120x120.pkl`` and
the 68-keypoint BFM bases in ``kpt68-bases/``; the inference recipe follows ``notes/prn.md`` ("Peer: 3DDFA_V2").
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..core.paths import SharedDataMissing, shared_dir

PEER_REL = "peers/3ddfa-v2"
SIZE = 120
# (name, in, out, stride) of the 13 depthwise-separable blocks at widen factor 0.5 (names as in the checkpoint)
_BLOCKS = (("dw2_1", 16, 32, 1), ("dw2_2", 32, 64, 2), ("dw3_1", 64, 64, 1), ("dw3_2", 64, 128, 2),
           ("dw4_1", 128, 128, 1), ("dw4_2", 128, 256, 2), ("dw5_1", 256, 256, 1), ("dw5_2", 256, 256, 1),
           ("dw5_3", 256, 256, 1), ("dw5_4", 256, 256, 1), ("dw5_5", 256, 256, 1), ("dw5_6", 256, 512, 2),
           ("dw6", 512, 512, 1))


class DepthWiseBlock(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv_sep = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(cout, eps=1e-5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn_dw(self.conv_dw(x)))
        return self.relu(self.bn_sep(self.conv_sep(x)))


class MobileNetV1x05(nn.Module):
    """3DDFA_V2's MobileNetV1 at widen factor 0.5: 120x120x3 -> 62 normalized 3DMM parameters."""

    def __init__(self, num_classes: int = 62, num_landmarks: int = 136):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, eps=1e-5)
        self.relu = nn.ReLU(inplace=True)
        for name, cin, cout, s in _BLOCKS:
            setattr(self, name, DepthWiseBlock(cin, cout, s))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc_param = nn.Linear(512, num_classes)
        self.fc_lm = nn.Linear(512, num_landmarks)     # present in the checkpoint, unused at inference

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for name, *_ in _BLOCKS:
            x = getattr(self, name)(x)
        return self.fc_param(torch.flatten(self.avgpool(x), 1))


def _load_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - old pickled checkpoints may need the full unpickler
        ck = torch.load(path, map_location="cpu", weights_only=False)
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else ck
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


class TDDFAPeer:
    """The 3DDFA_V2 mb05 model: ``predict_roi(image_bgr, roi)`` -> (68, 3) float32 landmarks in image pixels;
    ``yaw(params(image_bgr, roi))`` -> head yaw in degrees."""

    def __init__(self, shared: str | os.PathLike | None = None, device: str = "cpu"):
        root = shared_dir(shared) / PEER_REL
        for rel in ("mb05_120x120.pth", "param_mean_std_62d_120x120.pkl", "kpt68-bases/u_base.txt",
                    "kpt68-bases/w_shp_base.txt", "kpt68-bases/w_exp_base.txt"):
            if not (root / rel).exists():
                raise SharedDataMissing(f"missing 3DDFA_V2 peer file {root / rel}")
        self.device = torch.device(device)
        self.net = MobileNetV1x05()
        self.net.load_state_dict(_load_checkpoint(root / "mb05_120x120.pth"), strict=True)
        self.net.eval().to(self.device)
        with open(root / "param_mean_std_62d_120x120.pkl", "rb") as f:
            ms = pickle.load(f)
        self.param_mean = np.asarray(ms["mean"], np.float64).reshape(62)
        self.param_std = np.asarray(ms["std"], np.float64).reshape(62)
        kb = root / "kpt68-bases"
        self.u_base = np.loadtxt(kb / "u_base.txt", dtype=np.float64).reshape(204, 1)
        self.w_shp = np.loadtxt(kb / "w_shp_base.txt", dtype=np.float64).reshape(204, 40)
        self.w_exp = np.loadtxt(kb / "w_exp_base.txt", dtype=np.float64).reshape(204, 10)

    @staticmethod
    def crop(image_bgr: np.ndarray, roi) -> np.ndarray:
        """3DDFA's ``crop_img``: integer-rounded box [sx,sy,ex,ey], zero padding outside the image."""
        h, w = image_bgr.shape[:2]
        sx, sy, ex, ey = [int(round(float(v))) for v in roi[:4]]
        dh, dw = ey - sy, ex - sx
        res = np.zeros((dh, dw) + image_bgr.shape[2:], dtype=image_bgr.dtype)
        dsx, sx = (-sx, 0) if sx < 0 else (0, sx)
        dex, ex = (dw - (ex - w), w) if ex > w else (dw, ex)
        dsy, sy = (-sy, 0) if sy < 0 else (0, sy)
        dey, ey = (dh - (ey - h), h) if ey > h else (dh, ey)
        if ex > sx and ey > sy:
            res[dsy:dey, dsx:dex] = image_bgr[sy:ey, sx:ex]
        return res

    @torch.no_grad()
    def params(self, image_bgr: np.ndarray, roi) -> np.ndarray:
        """The de-normalized 62 parameters (12 pose, 40 shape, 10 expression) for one roi."""
        img = image_bgr
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        crop = cv2.resize(self.crop(img, roi), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        x = (crop.transpose(2, 0, 1).astype(np.float32) - 127.5) / 128.0
        inp = torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device)
        out = self.net(inp)[0].cpu().numpy().astype(np.float64)
        return out * self.param_std + self.param_mean

    def landmarks_120(self, params: np.ndarray) -> np.ndarray:
        """(3, 68) landmarks in the 120x120 crop frame (3DDFA's ``similar_transform`` already applied)."""
        Rt = params[:12].reshape(3, 4)
        R, t = Rt[:, :3], Rt[:, 3:]
        alpha, beta = params[12:52].reshape(40, 1), params[52:62].reshape(10, 1)
        pts = (self.u_base + self.w_shp @ alpha + self.w_exp @ beta).reshape(3, -1, order="F")
        pts = R @ pts + t
        pts[0] -= 1
        pts[1] = SIZE - pts[1]
        return pts

    @staticmethod
    def yaw(params: np.ndarray) -> float:
        """Head yaw in degrees, the project's convention (core.pose.euler_from_rotation; > 0: the subject turns to
        its left), from the scaled rotation of the 12 pose parameters. BFM's model frame is ours: x to the subject's
        left, y up, z out of the face; 3DDFA's crop frame before its y flip is image-aligned with y up."""
        from ..core.pose import euler_from_rotation
        R = params[:12].reshape(3, 4)[:, :3]
        return euler_from_rotation(R / np.linalg.norm(R, axis=1, keepdims=True))[0]

    def predict_roi(self, image_bgr: np.ndarray, roi, params: np.ndarray | None = None) -> np.ndarray:
        """(68, 3) float32 landmarks in image pixels from a BGR uint8 image and a crop box [sx, sy, ex, ey]
        (``params``: this image's, when already computed)."""
        pts = self.landmarks_120(self.params(image_bgr, roi) if params is None else params)
        sx, sy, ex, ey = [float(v) for v in roi[:4]]
        sx_s, sy_s = (ex - sx) / SIZE, (ey - sy) / SIZE
        out = np.empty((68, 3), np.float64)
        out[:, 0] = pts[0] * sx_s + sx
        out[:, 1] = pts[1] * sy_s + sy
        out[:, 2] = pts[2] * sx_s
        return out.astype(np.float32)
