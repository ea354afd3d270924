"""The face's surround in a 256 crop: its mask and its blur, in torch.

Real photos' surroundings (background, hair, neck, clothes) mislead a network trained on synthetic scenes (stop 23).
Training blurs the surround of a share of its scenes (train.py --context-blur, synth.sampler.blur_context), so the
network learns not to rely on it; inference can blur it in the second pass's views, outside the first pass's
landmarks (InferenceOptions.surround_blur).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .constants import RESOLUTION


def gaussian_kernel(k: int) -> torch.Tensor:
    """cv2.getGaussianKernel(k, 0): the 1D Gaussian of odd size ``k`` with OpenCV's default sigma for it."""
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    x = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def context_mask(lm: torch.Tensor, grow: torch.Tensor, n: int = RESOLUTION, bins: int = 360) -> torch.Tensor:
    """(B,1,n,n) float mask, 1 on the face region of 68 landmarks ``lm`` (B,68,2) in crop pixels: the convex hull of
    the landmarks plus the brow points (17-26) raised by 0.35 x the landmark box height, grown by ``grow`` (B,)
    about the landmarks' mean. The hull is taken as the intersection of ``bins`` supporting half-planes, looked up
    per pixel through its radial function at ``bins`` angles (1 degree: under 2 px at a 100 px radius); all in
    torch on ``lm``'s device, no host sync."""
    lo, hi = lm.amin(1), lm.amax(1)
    c = lm.mean(1)                                                                        # (B,2)
    brows = lm[:, 17:27] - torch.stack([torch.zeros_like(lo[:, 1]), 0.35 * (hi[:, 1] - lo[:, 1])], -1)[:, None]
    q = (torch.cat([lm, brows], 1) - c[:, None]) * grow[:, None, None]                    # (B,78,2)
    phi = torch.arange(bins, device=lm.device, dtype=torch.float32) * (2 * math.pi / bins)
    u = torch.stack([phi.cos(), phi.sin()], -1)                                           # (K,2)
    h = (q @ u.T).amax(1).clamp_min(1e-3)                                                 # (B,K) support function
    cosd = (phi[:, None] - phi[None, :]).cos()                                            # (theta, K)
    rho = torch.where(cosd > 1e-6, h[:, None, :] / cosd.clamp_min(1e-6), torch.inf).amin(-1)   # (B,theta) radius
    ramp = torch.arange(n, device=lm.device, dtype=torch.float32)
    dx = ramp[None, None, :] - c[:, 0, None, None]
    dy = ramp[None, :, None] - c[:, 1, None, None]
    b = ((torch.atan2(dy, dx) % (2 * math.pi)) * (bins / (2 * math.pi))).round().long() % bins    # (B,n,n)
    r = torch.gather(rho, 1, b.flatten(1)).view_as(b)
    return ((dx ** 2 + dy ** 2).sqrt() <= r)[:, None].float()


def blur_surround(img: torch.Tensor, lm: torch.Tensor, grow: torch.Tensor) -> torch.Tensor:
    """The crops ``img`` (B,3,n,n) Gaussian-blurred outside the face region of their landmarks ``lm`` (B,68,2, crop
    pixels; context_mask, grown by ``grow`` (B,)): kernel 2 int(s/4) + 1, s = sqrt of the landmark box's area, with
    OpenCV's sigma for that size (gaussian_kernel) and reflected borders."""
    n = img.shape[-1]
    lm = lm.float()
    side = (lm.amax(1) - lm.amin(1)).clamp_min(1.0)
    ks = (2 * (side.prod(-1).sqrt() / 4).long() + 1).clamp(3, n // 2 - 1).tolist()
    K = max(ks)
    w = torch.zeros(len(ks), K)
    for j, k in enumerate(ks):
        o = (K - k) // 2
        w[j, o:o + k] = gaussian_kernel(k)
    w = w.repeat_interleave(3, 0).to(img)                                    # (3B,K): one kernel per channel
    x = F.pad(img.reshape(1, -1, n, n), (K // 2,) * 4, mode="reflect")
    x = F.conv2d(x, w[:, None, :, None], groups=w.shape[0])                 # along y
    x = F.conv2d(x, w[:, None, None, :], groups=w.shape[0]).view(-1, 3, n, n)   # along x
    m = context_mask(lm, grow, n)
    return img * m + x * (1 - m)
