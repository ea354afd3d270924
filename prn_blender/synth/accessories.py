"""Hair and glasses drawn around and over the rendered head, in image space on the head layer's canvas.

Real photos show hair volume beyond the skull (the ICT head is bald under a painted hair cap), long hair and locks
that frame or hide the jaw line, fringes over the forehead, and glasses; the network must not rely on a bald
silhouette or an always-visible jaw. Everything here is placed from the sample's own 68 ground-truth landmarks
in a face frame (centre = landmark mean, "up" = chin -> brows, unit = mean landmark-box side), so it follows pose,
roll and scale, and is warped with the head by the paper's augmentation. The position map is never changed: what
hair or glasses hide must be inferred, like the paper's occlusions.

All randomness is in the parameters drawn by ``sample_accessories`` (part of ``sampler.sample_params``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

STRANDS = 96        # strand-noise cells across three face units
JAG = 24            # cells of the noise that makes hair edges ragged
GLASSES_MAX_YAW = 0.87   # radians (50 deg): beyond it the far lens would show through the nose (drawn in 2D), so
#                          yaw-aware scenes leave it out; other scenes have no glasses beyond this yaw at all
LOCK_HIDDEN_YAW = 0.61   # radians (35 deg): beyond it the jaw end on the nose's side is behind the face, and so is
#                          a lock hanging there (yaw-aware scenes); drawn over the face it would cover most of it


def sample_accessories(B: int, g: torch.Generator) -> dict:
    """Hair style and glasses parameters, (B,...) tensors on the CPU."""
    def U(*shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    return dict(
        hair_vol=torch.where(U(B) < 0.8, U(B, lo=0.03, hi=0.22), torch.zeros(B)),  # volume beyond the skull
        hair_len=U(B, lo=-0.1, hi=1.6),          # how far below the brows the hair reaches (face units)
        bangs=torch.where(U(B) < 0.25, U(B, lo=-0.04, hi=0.25), torch.full((B,), 9.0)),  # fringe edge above brows
        locks=(U(B, 2) < 0.3).float() * U(B, 2, lo=0.03, hi=0.2),   # locks over the image-left / right jaw
        strands=U(B, STRANDS), jag=U(B, 3, JAG) * 2 - 1,
        glasses=(U(B) < 0.15).float(), sunglasses=(U(B) < 0.4).float(),
        frame_col=U(B, 3) * U(B, 1) * 0.6, lens_col=U(B, 3) * 0.25, frame_w=U(B, lo=0.012, hi=0.035),
        lens_size=U(B, lo=0.9, hi=1.25),
    )


def _at(u: torch.Tensor, span: float = 1.5) -> torch.Tensor:
    """The grid_sample grid (B,H,W,2) that reads 1D noise (``_noise``) at face coordinate u (B,H,W), the noise's
    knots spread over [-span, span]."""
    return torch.stack([u / span, torch.zeros_like(u)], -1)


def _noise(noise: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Per-sample 1D noise (B,ch,K) interpolated linearly at the face coordinates of ``at`` (``_at``) and held at the
    ends: (B,ch,H,W). One grid_sample pass for all ``ch`` channels (what a floor / gather / blend over the canvas
    per channel gave, 2.7x faster on the CPU)."""
    return F.grid_sample(noise[:, :, None], at, mode="bilinear", padding_mode="border", align_corners=True)


def _box(a: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Mean over the 2r+1 window along ``dim`` (-1 or -2) of (B,1,H,W) in [0, 1], zeros outside: a difference of
    running sums, so the cost does not grow with r (avg_pool2d's does: 30x slower at r = 35). The sums stay below
    a canvas side, where float32 keeps 1e-5 (float64 cost 2.4x the time for the same blur within 3e-7)."""
    n, k = a.shape[dim], 2 * r + 1
    pad = (r + 1, r, 0, 0) if dim == -1 else (0, 0, r + 1, r)
    c = F.pad(a, pad).cumsum(dim)
    return (c.narrow(dim, k, n) - c.narrow(dim, 0, n)) / k


def _blur(a: torch.Tensor, r: int) -> torch.Tensor:
    """Box blur (B,1,H,W) with radius r, twice (a smooth bump); separable, zeros outside."""
    for _ in range(2):
        a = _box(_box(a, r, -1), r, -2)
    return a


def _over(layer: torch.Tensor, rgb: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Paint colour ``rgb`` (B,3,1|H,1|W) with coverage ``a`` (B,1,H,W) over the premultiplied layer (B,4,H,W)."""
    return a * torch.cat([rgb.expand(-1, -1, *a.shape[2:]), torch.ones_like(a)], 1) + (1 - a) * layer


def _dot(g: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(pixel - c) . w for every pixel of the square canvas whose pixel centres are ``g`` (C,) on both axes
    (x = g[column], y = g[row]); c, w (B,2). (B,C,C), from two (B,C) outer terms: no (B,C,C,2) temporaries."""
    return ((g - c[:, :1]) * w[:, :1])[:, None, :] + ((g - c[:, 1:]) * w[:, 1:])[:, :, None]


def _segment_dist(g: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of the canvas pixels (centres ``g`` (C,) on both axes) to segments a->b (B,2): (B,C,C)."""
    ab = b - a
    t = (_dot(g, a, ab) / (ab * ab).sum(-1).clamp_min(1e-6)[:, None, None]).clamp(0, 1)
    ex = (g - a[:, :1])[:, None, :] - t * ab[:, 0, None, None]
    ey = (g - a[:, 1:])[:, :, None] - t * ab[:, 1, None, None]
    return (ex * ex + ey * ey).sqrt()


def draw(layer: torch.Tensor, k: torch.Tensor, p: dict) -> torch.Tensor:
    """Hair behind and over the head, then glasses, on the premultiplied head layer (B,4,C,C).
    ``k`` (B,68,2) are the landmarks in canvas pixels; ``p`` the scene parameters (sampler.sample_params), with an
    optional ``p["yaw_aware"]`` (B,) bool: that sample follows generator 9's rules for turned heads (glasses beyond
    GLASSES_MAX_YAW, no lock over the face from the hidden side beyond LOCK_HIDDEN_YAW). Training scenes set it;
    the held-out synthetic benchmark keeps the earlier drawing."""
    B, _, C, _ = layer.shape
    dev = layer.device
    centre = k.mean(1)
    up = F.normalize((k[:, 17:27].mean(1) - k[:, 8]), dim=-1)        # image pixels, y down: points to the brows
    right = torch.stack([-up[:, 1], up[:, 0]], -1)
    unit = ((k.max(1).values - k.min(1).values).sum(-1) / 2).clamp_min(1.0)
    g = torch.arange(C, device=dev, dtype=layer.dtype)                               # pixel centres, both axes
    u = _dot(g, centre, right) / unit[:, None, None]                                # face units, image-right
    v = _dot(g, centre, up) / unit[:, None, None]                                   # face units, up
    brow = ((k[:, 17:27].mean(1) - centre) * up).sum(-1) / unit                      # (B,)
    P = lambda name: p[name].to(dev)[:, None, None]  # noqa: E731
    at_u = _at(u)
    strand = _noise(p["strands"].to(dev)[:, None], at_u)[:, 0]                       # vertical strands
    jag = (0.05 * torch.cat([_noise(p["jag"][:, :2].to(dev), at_u), _noise(p["jag"][:, 2:].to(dev), _at(v))], 1)
           ).unbind(1)
    hair_rgb = p["hair"].to(dev)[:, :, None, None] * (0.55 + 0.6 * strand)[:, None]
    alpha = layer[:, 3:]
    yaw = p["yaw"].to(dev).abs()
    aware = p["yaw_aware"].to(dev) if "yaw_aware" in p else torch.zeros(B, dtype=torch.bool, device=dev)
    # > 0: the nose points to image-right, so the image-right jaw end (landmark 16) is the one turning away
    nose = ((k[:, 30] - (k[:, 0] + k[:, 16]) / 2) * right).sum(-1) / unit

    # volume behind the head: the skull silhouette, grown and rounded, above the hair's lower end
    r = int((p["hair_vol"].max() * unit.max()).clamp(1, C // 4))
    grown = _blur(alpha, r)[:, 0]
    reach = (p["hair_vol"].to(dev) * unit / r).clamp(0, 1)[:, None, None]            # per-sample growth
    vol = (grown > 0.5 - 0.45 * reach) & (v > brow[:, None, None] - P("hair_len") + jag[0]) & (P("hair_vol") > 0)
    volf = vol[:, None].to(layer.dtype)
    layer = layer + (1 - alpha) * torch.cat([hair_rgb, torch.ones_like(alpha)], 1) * volf   # behind the head

    # over the face: a fringe above a ragged line, and locks hanging over the jaw line at the sides
    where = vol | (alpha[:, 0] > 0.5)
    fringe = (v > brow[:, None, None] + P("bangs") + jag[1]) & where
    side_u = ((k[:, [0, 16]] - centre[:, None]) * right[:, None]).sum(-1) / unit[:, None]     # (B,2) jaw ends
    long = (p["hair_len"].to(dev) > 0.6)[:, None, None]
    front = fringe
    for s, sign in ((0, -1.0), (1, 1.0)):
        w = p["locks"][:, s].to(dev)[:, None, None]
        inner = side_u[:, s, None, None] - sign * (w - jag[2])
        hidden = aware & (yaw > LOCK_HIDDEN_YAW) & (sign * nose > 0)
        lock = (sign * (u - inner) > 0) & (v > brow[:, None, None] - P("hair_len")) & long & (w > 0) & where
        front = front | (lock & ~hidden[:, None, None])
    layer = _over(layer, hair_rgb, (front.to(layer.dtype) * (0.8 + 0.2 * strand))[:, None])

    # glasses: two lens ellipses on the eye lines (only the near one beyond GLASSES_MAX_YAW), frame rings, a
    # bridge and the visible temple(s)
    profile = yaw >= GLASSES_MAX_YAW
    on = (p["glasses"].to(dev) > 0) & (~profile | aware)
    if on.any():                     # only the samples that wear them (15 %): the canvas-sized work is per sample
        i = on.nonzero()[:, 0]
        sub = {n: p[n].to(dev)[i] for n in ("frame_w", "lens_size", "sunglasses", "lens_col", "frame_col")}
        sub["near_only"] = profile[i]
        layer = layer.index_copy(0, i, _glasses(layer[i], k[i], g, unit[i], up[i], right[i], nose[i], sub))
    return layer


def _glasses(layer, k, g, unit, up, right, nose, p):
    dev, dt = layer.device, layer.dtype
    lens_a = torch.zeros(layer.shape[0], *layer.shape[2:], device=dev, dtype=dt)
    frame = torch.zeros_like(lens_a, dtype=torch.bool)
    fw = (p["frame_w"].to(dev) * unit)[:, None, None]
    # the temple on the side the nose points away from shows, and in profile the lens on the nose's side is hidden
    shown = (~p["near_only"] | (nose > 0), ~p["near_only"] | (nose <= 0))
    outer = []
    for (a, b), lens_on in zip(((36, 39), (42, 45)), shown):
        c = k[:, a:b + 1].mean(1)
        along = (k[:, b] - k[:, a])
        half = (along.norm(dim=-1) * 0.5 * 1.45 * p["lens_size"].to(dev)).clamp_min(2.0)
        ax = F.normalize(along, dim=-1)
        ay = torch.stack([-ax[:, 1], ax[:, 0]], -1)
        hb = 0.17 * unit * p["lens_size"].to(dev)
        e = (_dot(g, c, ax) / half[:, None, None]) ** 2 + (_dot(g, c, ay) / hb[:, None, None]) ** 2
        rim = 1 + fw / torch.minimum(half, hb)[:, None, None]
        lens_on = lens_on[:, None, None]
        lens_a = torch.maximum(lens_a, ((e < 1) & lens_on).to(dt))
        frame |= (e >= 1) & (e < rim ** 2) & lens_on
        outer.append((c - ax * half[:, None], c + ax * half[:, None]))
    # bridge: between the lenses, or from the near lens to the top of the nose when the far one is hidden
    a, b = outer[0][1], outer[1][0]
    a = torch.where(shown[0][:, None], a, k[:, 27])
    b = torch.where(shown[1][:, None], b, k[:, 27])
    frame |= _segment_dist(g, a, b) < fw * 0.6
    # the temple on the side the nose points away from shows; both when the face is near frontal
    for end, ear, show in ((outer[0][0], k[:, 0], nose > -0.05), (outer[1][1], k[:, 16], nose < 0.05)):
        seg = _segment_dist(g, end, ear - up * 0.05 * unit[:, None]) < fw * 0.5
        frame |= seg & show[:, None, None]
    sun = p["sunglasses"].to(dev)[:, None, None]
    la = lens_a * (sun * 0.9 + (1 - sun) * 0.12)
    fa = frame.to(dt)
    lens_rgb = p["lens_col"].to(dev)[:, :, None, None]
    frame_rgb = p["frame_col"].to(dev)[:, :, None, None]
    return _over(_over(layer, lens_rgb, la[:, None]), frame_rgb, fa[:, None])
