"""Random scene parameters for the renderer, and image-space degradations/backgrounds/occlusions.

Everything is drawn from one ``torch.Generator`` so a seed reproduces a batch exactly (on the same device).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.constants import RESOLUTION
from ..core.context import blur_surround
from .accessories import sample_accessories

# ARKit-named expression groups sampled together (L/R pairs are made symmetric most of the time)
_COMMON = {"jawOpen": 0.35, "eyeBlink_L": 0.15, "mouthSmile_L": 0.3, "browInnerUp_L": 0.15, "browDown_L": 0.1,
           "mouthFunnel": 0.08, "mouthPucker": 0.08, "eyeWide_L": 0.08, "eyeSquint_L": 0.1, "cheekSquint_L": 0.1,
           "mouthFrown_L": 0.1, "mouthStretch_L": 0.1, "mouthUpperUp_L": 0.08, "mouthLowerDown_L": 0.1,
           "noseSneer_L": 0.05, "jawLeft": 0.05, "jawRight": 0.05, "mouthLeft": 0.05, "mouthRight": 0.05,
           "mouthRollLower": 0.05, "mouthPress_L": 0.05, "mouthShrugUpper": 0.05, "cheekPuff_L": 0.04,
           "browOuterUp_L": 0.1, "mouthClose": 0.03, "mouthDimple_L": 0.05}

# share of scenes whose yaw is uniform over +-max_yaw (the others: N(0, 25 deg)); the held-out benchmark's value
YAW_UNIFORM = 0.4

SKIN_TONES = torch.tensor([[0.96, 0.80, 0.69], [0.90, 0.70, 0.58], [0.80, 0.58, 0.45], [0.65, 0.45, 0.33],
                           [0.48, 0.32, 0.22], [0.33, 0.22, 0.15], [0.92, 0.76, 0.62], [0.75, 0.57, 0.40]])
HAIR = torch.tensor([[0.05, 0.04, 0.03], [0.15, 0.10, 0.06], [0.30, 0.20, 0.12], [0.55, 0.40, 0.25],
                     [0.75, 0.62, 0.40], [0.45, 0.20, 0.10], [0.6, 0.6, 0.6], [0.12, 0.12, 0.12]])

#: iris colours (albedo before the renderer's 0.6): dark brown, brown twice, hazel, green, blue, grey
IRIS = torch.tensor([[0.30, 0.16, 0.08], [0.45, 0.27, 0.12], [0.45, 0.27, 0.12], [0.45, 0.38, 0.18],
                     [0.30, 0.38, 0.22], [0.30, 0.40, 0.55], [0.40, 0.42, 0.45]])


def _iris(pick: torch.Tensor, bright: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """(B,3) iris albedo: IRIS[pick in [0, 1) -> a colour] times ``bright``, mixed ``grey`` of the way to its grey."""
    c = IRIS[(pick * len(IRIS)).long().clamp(max=len(IRIS) - 1)]
    return (c * (1 - grey) + c.mean(-1, keepdim=True) * grey) * bright


def sample_params(B: int, names: tuple, g: torch.Generator, device="cpu", max_yaw: float = 90.0,
                  id_scale: float = 1.0, image_g: torch.Generator | None = None,
                  yaw_uniform: float = YAW_UNIFORM) -> dict:
    """Draw B scene parameter sets (see FaceRenderer.render) with the CPU generator ``g``; the background image
    with ``image_g`` (default ``g``), whose device it is drawn on (a CUDA generator keeps it on the GPU).
    Yaw: see sample_yaw."""
    with torch.device("cpu"):   # the scene parameters are small: drawn on the CPU, whatever the default device
        def U(*shape, lo=0.0, hi=1.0):
            return torch.rand(*shape, generator=g) * (hi - lo) + lo

        def N(*shape):
            return torch.randn(*shape, generator=g)

        idx = {n: i for i, n in enumerate(names)}
        ex = torch.zeros(B, len(names))
        for name, prob in _COMMON.items():
            on = U(B) < prob
            w = U(B) ** 0.7
            ex[on, idx[name]] = w[on]
            if name.endswith("_L"):
                other = idx[name[:-2] + "_R"]
                sym = U(B) < 0.75
                ex[on & sym, other] = (w * U(B, lo=0.8, hi=1.0))[on & sym]
                solo = (U(B) < prob * 0.3) & ~on
                ex[solo, other] = U(B)[solo]
        # small random background activation of everything
        ex += (U(B, len(names)) < 0.05) * U(B, len(names)) * 0.3
        ex = ex.clamp(0, 1)
        yaw = sample_yaw(B, g, max_yaw, yaw_uniform)
        pitch = (N(B) * 14 - 3).clamp(-50, 45)
        roll = (N(B) * 8).clamp(-30, 30)
        persp = torch.where(U(B) < 0.6, U(B, lo=40, hi=250), torch.full((B,), math.inf))
        skin = SKIN_TONES[torch.randint(len(SKIN_TONES), (B,), generator=g)] * U(B, 1, lo=0.85, hi=1.1) \
            * (1 + 0.06 * N(B, 3))
        hair = HAIR[torch.randint(len(HAIR), (B,), generator=g)] * U(B, 1, lo=0.8, hi=1.2)
        light_dir = torch.stack([N(B) * 0.8, N(B) * 0.6 + 0.3, U(B, lo=0.2, hi=1.5)], -1)
        warm = U(B, 3, lo=0.85, hi=1.15)
        p = dict(
            identity=N(B, 100) * id_scale, expression=ex,
            yaw=yaw * math.pi / 180, pitch=pitch * math.pi / 180, roll=roll * math.pi / 180, persp_dist=persp,
            skin=skin.clamp(0.05, 1), hair=hair.clamp(0, 1), noise_w=N(B, 8),
            lip_tint=torch.stack([U(B, lo=0.85, hi=1.05), U(B, lo=0.6, hi=0.85), U(B, lo=0.6, hi=0.9)], -1),
            brow_strength=U(B, lo=0.45, hi=0.95), brow_col=(hair * U(B, 1, lo=0.35, hi=1.0)).clamp(0, 1),
            lash=U(B, lo=0.3, hi=0.9), sclera=U(B, 1, lo=0.55, hi=0.9) * U(B, 3, lo=0.92, hi=1.0),
            occlusion=U(B, lo=0.3, hi=0.9),
            beard=torch.where(U(B) < 0.2, U(B, lo=0.1, hi=0.5), torch.zeros(B)),
            hair_idx=torch.where(U(B) < 0.9, torch.randint(4, (B,), generator=g), torch.full((B,), 4)),
            mouth_col=torch.stack([U(B, lo=0.35, hi=0.6), U(B, lo=0.1, hi=0.2), U(B, lo=0.1, hi=0.2)], -1),
            teeth=U(B, 1, lo=0.7, hi=0.95) * torch.tensor([1.0, 0.97, 0.88]),
            iris=_iris(U(B), U(B, 1, lo=0.6, hi=1.4), U(B, 1, hi=0.3)),
            light_dir=light_dir, light_col=warm * U(B, 1, lo=0.4, hi=1.0),
            ambient=U(B, 3, lo=0.9, hi=1.1) * U(B, 1, lo=0.25, hi=0.7),
            specular=U(B, lo=0.0, hi=0.25), shininess=U(B, lo=5, hi=40),
        )
        p.update(sample_accessories(B, g))
    p["background"] = random_background(B, image_g or g)
    return {k: v.to(device) for k, v in p.items()}


def sample_yaw(B: int, g: torch.Generator, max_yaw: float = 90.0, yaw_uniform: float = YAW_UNIFORM) -> torch.Tensor:
    """(B,) head yaw in degrees (CPU generator ``g``): with probability ``yaw_uniform`` uniform over +-max_yaw,
    else N(0, 25 deg) clamped to it; partly covering the full range, partly concentrated near frontal."""
    with torch.device("cpu"):
        yaw_u = torch.rand(B, generator=g) * (2 * max_yaw) - max_yaw
        yaw_n = (torch.randn(B, generator=g) * 25).clamp(-max_yaw, max_yaw)
        return torch.where(torch.rand(B, generator=g) < yaw_uniform, yaw_u, yaw_n)


def sample_lighting(B: int, g: torch.Generator, device="cpu", prob: float = 0.6) -> dict:
    """Environment lighting for training scenes (``p["sh"]``, see FaceRenderer.render): with probability ``prob``
    the ambient term varies with the camera-space normal n = (x, y, z) as
    ambient * max(0, 1 + sum_k c_k (Y_k(n) - Y_k(0, 0, 1))), Y = (x, y, z, xy, yz, xz, x^2 - y^2, 3z^2 - 1) the
    non-constant real spherical harmonics up to order 2 (unnormalised): surfaces facing the camera keep the ambient
    level (the exposure), the others vary; c (B,8,3): one draw per sample, sd 0.5 (order 1) / 0.2 (order 2),
    tinted per channel by 1 +- 0.15. Drawn separately from ``sample_params`` so that the held-out synthetic
    benchmark (evaluate.run) keeps its fixed scene distribution."""
    with torch.device("cpu"):
        on = (torch.rand(B, 1, 1, generator=g) < prob).float()
        scale = torch.tensor([0.5] * 3 + [0.2] * 5)[None, :, None]
        c = torch.randn(B, 8, 1, generator=g) * (1 + 0.15 * torch.randn(B, 8, 3, generator=g)) * scale * on
    return {"sh": c.to(device)}


def sample_body(B: int, g: torch.Generator, device="cpu", prob: float = 1.0) -> dict:
    """The body under the head for training scenes (train.py --body P; see FaceRenderer._body): in a share ``prob``
    of the scenes (``body``) a clothed torso, whose yaw, pitch and roll are the shares ``body_yaw`` U(0, 1),
    ``body_pitch`` U(0.3, 1), ``body_roll`` U(0, 1) of the head's (the neck turns between the two; 1 elsewhere:
    no turn), half width U(15, 23) cm, half depth U(9, 13) cm, centre U(-3, 0) cm behind the neck's, shoulders
    dropping U(3, 8) cm, a neck U(0, 3) cm longer; skin out to ``collar`` U(0, 0.4) of the shoulders (all of them
    in 15 %), cloth of a random colour and saturation with pattern contrast U(0, 0.35). Drawn with its own
    generator ``g`` (CPU), so a run with the body sees the same scenes as one without."""
    with torch.device("cpu"):
        def U(*shape, lo=0.0, hi=1.0):
            return torch.rand(*shape, generator=g) * (hi - lo) + lo

        on = U(B) < prob
        one = torch.ones(B)
        hue = U(B, 3)
        grey = hue.mean(1, keepdim=True)
        cloth = (grey + U(B, 1) * (hue - grey)) * U(B, 1, lo=0.1, hi=1.0) / hue.amax(1, keepdim=True).clamp_min(0.1)
        collar = torch.where(U(B) < 0.15, one, U(B, hi=0.4))
        p = {"body": on, "body_yaw": torch.where(on, U(B), one), "body_pitch": torch.where(on, U(B, lo=0.3), one),
             "body_roll": torch.where(on, U(B), one), "body_width": U(B, lo=15, hi=23),
             "body_depth": U(B, lo=9, hi=13), "body_z": U(B, lo=-3, hi=0), "shoulder_drop": U(B, lo=3, hi=8),
             "neck_extra": U(B, hi=3), "collar": collar, "cloth": cloth.clamp(0, 1), "cloth_tex": U(B, hi=0.35)}
    return {k: v.to(device) for k, v in p.items()}


def sample_shadows(B: int, g: torch.Generator, device="cpu", prob: float = 1.0) -> dict:
    """Cast shadows of the key light for training scenes (train.py --shadows P; see FaceRenderer._lit): on in a
    share ``prob`` of the scenes (``shadow``), the shadow map's cell U(1.5, 3) crop pixels (``shadow_cell``: the
    softness of the edges). Drawn with its own generator ``g`` (CPU), so a run with shadows sees the same scenes as
    one without, shadowed. Stop 46 (runs/s46_rule.txt): two 45-minute CPU fine-tunes of the shipped model, the same
    but for --shadows 0.7, pseudo real set V4 2.826 with shadows vs 2.794 without (+0.032 [-0.008, +0.071]; both
    worse than the shipped model's 2.767): no gain at that budget; off by default, an arm for GPU runs."""
    with torch.device("cpu"):
        on = torch.rand(B, generator=g) < prob
        cell = torch.rand(B, generator=g) * 1.5 + 1.5
    return {"shadow": on.to(device), "shadow_cell": cell.to(device)}


def sample_detail(B: int, g: torch.Generator, beard: torch.Tensor, device="cpu", full_beard: float = 0.12) -> dict:
    """Fine appearance detail for training scenes (train.py --detail; see FaceRenderer.albedo): strand streaks on
    the hair (contrast ``hair_tex`` U(0.15, 0.6)), mottling of the skin (``skin_tex`` U(0, 0.1)), and a full
    beard (strength U(0.6, 1), hair-coloured, mottled) instead of ``beard`` (B,) in a share ``full_beard`` of the
    scenes. Drawn with its own generator ``g`` (CPU), so the held-out synthetic benchmark keeps its scenes and a
    run with detail sees the same scenes as one without, dressed. Stop 33 (runs/s33_rule.txt): fine-tunes of the
    shipped model, 2,346 steps of batch 64 on an H200 each, pseudo real set V4 3.036 with detail (3.039 with more
    large yaw too) vs 3.069 for the same scenes without it; all three worse than the shipped soup (3.002)."""
    with torch.device("cpu"):
        hair_tex = torch.rand(B, generator=g) * 0.45 + 0.15
        skin_tex = torch.rand(B, generator=g) * 0.1
        full = torch.rand(B, generator=g) < full_beard
        strength = torch.rand(B, generator=g) * 0.4 + 0.6
    beard = torch.where(full.to(beard.device), strength.to(beard.device), beard)
    return {"hair_tex": hair_tex.to(device), "skin_tex": skin_tex.to(device), "beard": beard.to(device)}


# Image-space randomness is drawn on the generator's device: with a CUDA generator the canvas-sized noise of the
# image ops below (backgrounds, occluder textures, sensor noise) never crosses the bus; with a CPU generator the
# draws are those of torch.rand/randn/randint(..., generator=g).
def _rand(g: torch.Generator, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=g, device=g.device)


def _randn(g: torch.Generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device=g.device)


def _randint(g: torch.Generator, *args) -> torch.Tensor:
    return torch.randint(*args, generator=g, device=g.device)


def _smooth_noise(B, C, res, g, out=RESOLUTION):
    return F.interpolate(_rand(g, B, C, res, res), size=(out, out), mode="bicubic", align_corners=False)


def random_background(B: int, g: torch.Generator) -> torch.Tensor:
    """(B,3,256,256) procedural backgrounds: smooth colour noise, gradients, stripes, blobs, a torso. Every
    sample's randomness is drawn; stripes, torso and the photo-like look are computed for the samples that have
    them."""
    n = RESOLUTION
    base = _rand(g, B, 3, 1, 1)
    res = int(_randint(g, 2, 24, (1,)))
    bg = base * 0.6 + 0.4 * _smooth_noise(B, 3, res, g)
    ramp = torch.linspace(-1, 1, n, device=g.device)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    ang = _rand(g, B, 1, 1) * 6.283
    grad = (xx * ang.cos() + yy * ang.sin())[:, None]
    bg = bg * (1 + 0.3 * grad * _rand(g, B, 1, 1, 1))
    freq = _randint(g, 3, 40, (B, 1, 1, 1))
    i = (_rand(g, B) < 0.2).nonzero()[:, 0].to(bg.device)                            # striped
    bg = bg.index_copy(0, i, bg[i] * (1 - 0.3 * torch.sin(grad[i] * freq[i]).gt(0).float()))
    # torso/clothing under the face
    cx = (_rand(g, B, 1, 1) - 0.5) * 0.4
    wide = 0.9 + 0.4 * _rand(g, B, 1, 1)
    i = (_rand(g, B) < 0.6).nonzero()[:, 0].to(bg.device)                            # with a torso
    cloth = _rand(g, B, 3, 1, 1)
    folds = _rand(g, B, 1, 6, 6)
    torso = ((((xx - cx[i]) / wide[i]) ** 2 + ((yy - 1.25) / 0.55) ** 2 < 1)[:, None].float())
    cloth = cloth[i] * (0.7 + 0.3 * F.interpolate(folds[i], size=(n, n), mode="bicubic", align_corners=False))
    bg = bg.index_copy(0, i, bg[i] * (1 - torso) + cloth * torso)
    # high-frequency texture
    bg = bg + 0.05 * (_rand(g, B, 1, n, n) - 0.5) * _rand(g, B, 1, 1, 1)
    # half of them photo-like: most photo backgrounds are far less saturated and often darker than colour noise
    i = (_rand(g, B) < 0.5).nonzero()[:, 0].to(bg.device)                            # photo-like
    sat, level = _rand(g, B, 1, 1, 1)[i], _rand(g, B, 1, 1, 1)[i]
    gray = bg[i].mean(1, keepdim=True)
    muted = (gray + (bg[i] - gray) * sat * 0.6) * (level * 0.9 + 0.1)
    return bg.index_copy(0, i, muted).clamp(0, 1)


def distract(background: torch.Tensor, layer: torch.Tensor, g: torch.Generator, prob: float = 0.25) -> torch.Tensor:
    """Another person behind the subject, as in group and crowd photos: with probability ``prob`` a sample's
    background (B,3,n,n) gets the head layer (B,4,C,C, premultiplied, canvas centred on the crop; see
    render.Batch) of the next sample in the batch, scaled by U(0.5, 1.2) and centred 0.45-0.95 crop widths to the
    left or right and up to 0.3 up or down, so that it is cut by the crop border and partly hidden by the subject.
    The subject's ground truth is untouched: the network must learn to ignore the other face."""
    B, _, n, _ = background.shape
    C = layer.shape[-1]
    dev = background.device
    on = (_rand(g, B) < prob).nonzero()[:, 0].to(dev)
    z = _rand(g, B) * 0.7 + 0.5
    side = torch.where(_rand(g, B) < 0.5, -1.0, 1.0)
    off = torch.stack([side * (_rand(g, B) * 0.5 + 0.45), (_rand(g, B) * 2 - 1) * 0.3], -1) * n  # (B,2) pixels
    if not len(on):
        return background
    # output crop pixel q samples the other head's canvas at (q - n/2 - off) / z about the canvas centre
    z, off = z.to(dev)[on], off.to(dev)[on]
    theta = torch.zeros(len(on), 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = n / (z * C)
    theta[:, :, 2] = -off / (z[:, None] * C / 2)
    other = layer.roll(-1, 0)[on]
    d = F.grid_sample(other, F.affine_grid(theta, (len(on), 4, n, n), align_corners=False), mode="bilinear",
                      padding_mode="zeros", align_corners=False)
    return background.index_copy(0, on, d[:, :3] + (1 - d[:, 3:]) * background[on])


def black_border(img: torch.Tensor, g: torch.Generator, prob: float = 0.2, max_frac: float = 0.35) -> torch.Tensor:
    """Zero a band along one random side of the crop (image only), as the crop of a face near a photo's edge
    is padded (crop.warp fills outside the image with 0); the band may cut into the face."""
    B, _, n, _ = img.shape
    on = _rand(g, B) < prob
    side = _randint(g, 4, (B,))                                     # top, bottom, left, right
    width = (_rand(g, B) * max_frac * n).long()
    i = on.nonzero()[:, 0]
    if not len(i):
        return img
    ramp = torch.arange(n, device=g.device)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    edge = torch.stack([yy, n - 1 - yy, xx, n - 1 - xx])[side[i]]   # (b,n,n) pixels from the chosen side
    m = (edge < width[i, None, None])[:, None].to(img.device)
    i = i.to(img.device)
    return img.index_copy(0, i, img[i].masked_fill(m, 0.0))


def occlude(img: torch.Tensor, g: torch.Generator, prob: float = 0.4) -> torch.Tensor:
    """The paper's synthetic occlusion: random ellipses/rectangles filled with a noise texture (image only).
    Every sample's randomness is drawn, occluded or not; the occluder is drawn on the occluded ones only."""
    B, _, n, _ = img.shape
    c = _rand(g, B, 2) * n * 0.8 + n * 0.1
    r = _rand(g, B, 2) * n * 0.22 + n * 0.05
    ellipse = _rand(g, B) < 0.5
    on = _rand(g, B) < prob
    base = _rand(g, B, 3, 1, 1) * 0.7
    coarse = _rand(g, B, 3, 16, 16)
    fine = _rand(g, B, 1, n, n)
    i = on.nonzero()[:, 0]
    if not len(i):
        return img
    ramp = torch.arange(n, dtype=torch.float32, device=g.device)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    c, r = c[i], r[i]
    dx, dy = xx - c[:, 0, None, None], yy - c[:, 1, None, None]
    rx, ry = r[:, 0, None, None], r[:, 1, None, None]
    ell = (dx / rx) ** 2 + (dy / ry) ** 2 < 1
    rect = (dx.abs() < rx) & (dy.abs() < ry)
    m = torch.where(ellipse[i, None, None], ell, rect)[:, None].to(device=img.device, dtype=img.dtype)
    tex = base[i] + 0.3 * F.interpolate(coarse[i], size=(n, n), mode="bicubic", align_corners=False) \
        + 0.15 * (fine[i] - 0.5)
    i = i.to(img.device)
    return img.index_copy(0, i, img[i] * (1 - m) + tex.clamp(0, 1).to(img.device) * m)


def expose(layer: torch.Tensor, pos: torch.Tensor, g: torch.Generator, target=(0.25, 0.65)) -> torch.Tensor:
    """Face-metered auto exposure, as a camera exposes for its subject: scale the colour of the head layer
    (B,4,C,C: premultiplied RGB + alpha on a canvas centred on the crop, see render.Batch) so that its mean
    luminance over the face pixels of the position map (B,3,256,256) is U(``target``); gain within [0.5, 3],
    colour clipped at full exposure. Rendered faces are darker than photos without it (mean face luminance of a
    training batch 0.33 vs 0.52 on the 16 AFLW2000-3D images, measured through the whole training pipeline)."""
    B, n = layer.shape[0], pos.shape[-1]
    m = (layer.shape[-1] - n) // 2
    face = (pos.abs().sum(1, keepdim=True) > 0).to(layer.dtype)
    lum = (layer[:, :3, m:m + n, m:m + n].mean(1, keepdim=True) * face).sum((1, 2, 3)) \
        / face.sum((1, 2, 3)).clamp_min(1)
    t = (_rand(g, B) * (target[1] - target[0]) + target[0]).to(layer.device)
    gain = (t / lum.clamp_min(1e-3)).clamp(0.5, 3.0)[:, None, None, None]
    return torch.cat([torch.minimum(layer[:, :3] * gain, layer[:, 3:]), layer[:, 3:]], 1)


def _resize(img: torch.Tensor, side: int) -> torch.Tensor:
    """Images (B,C,n,n) resampled to (B,C,side,side) as a camera pipeline would: pixel-area means when shrinking,
    bilinear when enlarging, unchanged at the same size."""
    n = img.shape[-1]
    if side == n:
        return img
    if side < n:
        return F.interpolate(img, size=(side, side), mode="area")
    return F.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)


def degrade(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Camera-like degradations: down/up-sampling blur, noise, gamma, contrast, colour cast, grayscale."""
    B, _, n, _ = img.shape
    dev = img.device
    out = img
    low = _rand(g, B) < 0.5
    if low.any():
        f = float(_rand(g, 1) * 0.6 + 0.25)
        m = int(n * f)
        out = out.clone()
        out[low] = _resize(_resize(out[low], m), n)
    gamma = (_rand(g, B, 1, 1, 1) * 0.8 + 0.7).to(dev)
    out = out.clamp(1e-4, 1) ** gamma
    contrast = (_rand(g, B, 1, 1, 1) * 0.6 + 0.7).to(dev)
    out = (out - 0.5) * contrast + 0.5 + ((_rand(g, B, 1, 1, 1) - 0.5) * 0.3).to(dev)
    gray = (_rand(g, B, 1, 1, 1) < 0.08).to(dev)
    out = torch.where(gray, out.mean(1, keepdim=True).expand_as(out), out)
    sigma = (_rand(g, B, 1, 1, 1) ** 2 * 0.05).to(dev)
    out = out + sigma * _randn(g, out.shape).to(dev)
    return out.clamp(0, 1)


#: JPEG's quantization tables (ITU-T T.81 Annex K: luminance, chrominance) at quality 50, row-major 8 x 8
_JPEG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
              14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_JPEG_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32
JPEG_QUALITY = (30.0, 95.0)               # a compressed scene's quality factor (libjpeg's 1-100 scale), uniform
#: the side (pixels) a compressed scene is coded at before it is resized back to the crop: a real photo is coded at
#: its own resolution, and its face crop is then resized to 256, so the 8 x 8 blocks land at many scales
JPEG_SIDES = (96, 128, 176, 256, 352)


def _dct_matrix(k: int = 8) -> torch.Tensor:
    """The orthonormal k-point DCT-II matrix D (coefficients = D @ block @ D.T)."""
    i = torch.arange(k, dtype=torch.float32)
    d = torch.cos((2 * i[None, :] + 1) * i[:, None] * math.pi / (2 * k)) * math.sqrt(2 / k)
    d[0] /= math.sqrt(2)
    return d


def jpeg_code(img: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Baseline JPEG's lossy steps on images (B,3,m,m) in [0,1], m a multiple of 16, each at its own ``quality``
    (B,) on libjpeg's scale: RGB -> YCbCr (JFIF), 4:2:0 chroma (2 x 2 means), 8 x 8 DCTs quantized with the
    Annex K tables scaled as libjpeg scales them, then back (chroma upsampled bilinearly, as decoders' "fancy"
    upsampling does). Entropy coding is lossless, so this is the image a decoder shows (cv2.imencode + imdecode's at
    the same quality within about one grey level on average, test_jpeg_code_is_what_a_jpeg_decoder_shows)."""
    B = img.shape[0]
    dev = img.device
    x = img.float() * 255
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b - 128
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    c = F.avg_pool2d(torch.stack([cb, cr], 1), 2)                                    # (B,2,m/2,m/2)
    q = quality.to(dev).float().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None]
    tables = [((torch.tensor(t, dtype=torch.float32, device=dev).view(8, 8) * scale + 50) / 100).floor().clamp(1, 255)
              for t in (_JPEG_LUMA, _JPEG_CHROMA)]                                   # (B,8,8) each
    D = _dct_matrix().to(dev)

    def code(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:            # plane (B,h,w), table (B,8,8)
        h, w = plane.shape[1:]
        blocks = plane.reshape(B, h // 8, 8, w // 8, 8).transpose(2, 3)              # (B,h/8,w/8,8,8)
        t = table[:, None, None]
        coef = torch.round(D @ blocks @ D.T / t) * t
        return (D.T @ coef @ D).transpose(2, 3).reshape(B, h, w)

    y = code(y, tables[0]) + 128
    c = torch.stack([code(c[:, 0], tables[1]), code(c[:, 1], tables[1])], 1)
    cb, cr = F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False).unbind(1)
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (rgb / 255).clamp(0, 1).to(img.dtype)


def compress(img: torch.Tensor, g: torch.Generator, prob: float = 0.5, quality=JPEG_QUALITY,
             sides=JPEG_SIDES) -> torch.Tensor:
    """With probability ``prob`` per sample, the image (B,3,n,n) in [0,1] as a JPEG decoder would show it
    (jpeg_code) at a quality uniform in ``quality``, coded at a side drawn from ``sides`` (resized there and back).
    Real photos and video frames are block-coded with subsampled chroma; rendered scenes are not. ``g``: the
    compression's own generator (every sample's numbers are drawn, compressed or not).

    Stop 41 (pseudo validation set, detector crops, NME2D %): the soup of two 1-hour CPU fine-tunes of ba80f84f with
    ``--jpeg 0.5`` scored webcam 1.98 / people 3.80 / photos 3.88 / talking 1.96 (mean 2.903), the soup of four
    without it (stop 40, 1.2 h each) 2.14 / 3.82 / 3.75 / 2.02 (2.931): better on video frames and registry photos,
    worse on the PRNet demo photos."""
    B, _, n, _ = img.shape
    on = _rand(g, B) < prob
    q = _rand(g, B) * (quality[1] - quality[0]) + quality[0]
    which = (_rand(g, B) * len(sides)).long().clamp_max(len(sides) - 1)
    out = img
    for k, m in enumerate(sides):
        i = (on & (which == k)).nonzero()[:, 0]
        if not len(i):
            continue
        x = _resize(jpeg_code(_resize(img[i.to(img.device)], m), q[i]), n)
        out = out.index_copy(0, i.to(img.device), x.clamp(0, 1))
    return out


def blur_context(img: torch.Tensor, lm: torch.Tensor, g: torch.Generator, prob: float = 0.5,
                 grow=(1.1, 1.4)) -> torch.Tensor:
    """With probability ``prob`` per sample, Gaussian-blur the image (B,3,n,n) outside the face region of its
    landmarks ``lm`` (B,68,2, crop pixels), grown by U(``grow``): core.context.blur_surround. Real photos'
    surroundings mislead a network trained on sharp synthetic ones (stop 23); this makes the surround an
    unreliable cue. ``g``: the blur's own generator (every sample's numbers are drawn, blurred or not)."""
    B = img.shape[0]
    on = _rand(g, B) < prob
    gr = _rand(g, B) * (grow[1] - grow[0]) + grow[0]
    i = on.nonzero()[:, 0].to(img.device)
    if not len(i):
        return img
    return img.index_copy(0, i, blur_surround(img[i], lm[i], gr[i.to(gr.device)].to(img.device)))


def augment(img: torch.Tensor, pos: torch.Tensor, g: torch.Generator, rot_deg=45.0, trans=0.1,
            scale=(0.9, 1.2), color=(0.6, 1.4), channel=0.15, layer: torch.Tensor | None = None,
            background: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentation on (image (B,3,H,W), position map (B,3,H,W) in crop pixels): in-plane rotation,
    translation (fraction of the crop), scale, and colour scaling. The position map's x,y values are moved by the
    same similarity; z is multiplied by the scale. Off-face pixels stay 0.

    Colour: one gain in ``color`` per image times a per-channel factor within 1 +- ``channel`` (clamped to
    ``color``): real photos vary in exposure far more than in hue. With ``layer`` (B,4,C,C), the premultiplied head
    layer on a canvas centred on the crop (C >= H), and ``background`` (B,3,H,W), only the head is warped, then
    composited over the (randomly mirrored) background: the crop border shows more of the head or background,
    never replicated-edge streaks. ``img`` is then unused."""
    B, _, n, _ = img.shape
    dev = img.device
    a = ((_rand(g, B) * 2 - 1) * rot_deg * math.pi / 180).to(dev)
    s = (_rand(g, B) * (scale[1] - scale[0]) + scale[0]).to(dev)
    t = ((_rand(g, B, 2) * 2 - 1) * trans * n).to(dev)
    c = n / 2
    # forward map (crop pixels): p' = s R (p - c) + c + t
    cos, sin = a.cos(), a.sin()
    A = torch.stack([torch.stack([s * cos, -s * sin], -1), torch.stack([s * sin, s * cos], -1)], -2)  # (B,2,2)
    # image warp: output pixel q samples input at A^-1 (q - c - t) + c ; in normalized coords (align_corners=False)
    Ai = torch.linalg.inv(A)
    theta = torch.cat([Ai, (-Ai @ t[..., None]) / c], -1)   # translation in normalized units
    grid = F.affine_grid(theta, img.shape, align_corners=False)
    if layer is None:
        img2 = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    else:   # same centre, larger canvas: normalized coordinates scale by n / C
        warped = F.grid_sample(layer, grid * (n / layer.shape[-1]), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        mirror = (_rand(g, B, 1, 1, 1) < 0.5).to(dev)
        bg = torch.where(mirror, background.flip(-1), background)
        img2 = warped[:, :3] + (1 - warped[:, 3:]) * bg
    mask = (pos.abs().sum(1, keepdim=True) > 0).to(pos.dtype)
    xy = pos[:, :2] + 0.5 - c   # pixel centres at integer+0.5 in the continuous frame used by grid_sample
    xy2 = torch.einsum("bij,bjhw->bihw", A, xy) + c - 0.5 + t[..., None, None]
    pos2 = torch.cat([xy2, pos[:, 2:] * s[:, None, None, None]], 1) * mask
    gain = _rand(g, B, 1, 1, 1) * (color[1] - color[0]) + color[0]
    cs = (gain * (1 + (_rand(g, B, 3, 1, 1) * 2 - 1) * channel)).clamp(*color).to(dev)
    return (img2 * cs).clamp(0, 1).contiguous(), pos2.contiguous()
