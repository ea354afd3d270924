"""Real photographs behind a share of the training faces (``train.py --photo-backgrounds P``).

The procedural backgrounds (sampler.random_background) are smooth noise, stripes and blobs; a real photo's
surround has edges, textures and objects. On the held-out synthetic scenes the shipped model's landmark error rose
from 4.28 to 4.69 % (single pass, 64 scenes, worse on 42) when the same heads were composited over crops of
scikit-image's photos below instead of their own procedural backgrounds (stop 36): real clutter misleads a model
that never saw it.

Two sources, both inside pinned dependencies (nothing is downloaded), both free to use as their packages state:
- PANORAMAS: Blender's eight world HDRIs in the bpy wheel (``<bpy>/<version>/datafiles/studiolights/world``, CC0 by
  Greg Zaal / Poly Haven, its license.txt): 1024 x 512 equirectangular panoramas of real places (a city, a
  courtyard, a forest, a hotel room, a studio, ...). A background is a pinhole camera's view of one (random
  heading, pitch and field of view), exposed and tone-mapped like a photo; narrow views are soft, as a portrait's
  out-of-focus background is.
- PHOTOS: scikit-image's bundled photos whose ``skimage.data`` docstrings say CC0, public domain or no known
  copyright restrictions; none shows a person. A background is a random square crop (a fifth to all of the
  photo's shorter side) with a random brightness.
Either is randomly mirrored and white-balanced, and resampled to the background's size.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .sampler import _rand, _randn

#: file in scikit-image's data folder -> its license as skimage.data states it
PHOTOS = {
    "coffee.png": "CC0 (photographer Rachel Michetti)",
    "rocket.jpg": "public domain (SpaceX)",
    "chelsea.png": "CC0 (photographer Stefan van der Walt)",
    "brick.png": "CC0 (CC0Textures, Bricks25)",
    "grass.png": "CC0 (DeviantArt, linolafett)",
    "gravel.png": "CC0 (CC0Textures, Gravel04)",
    "hubble_deep_field.jpg": "public domain (NASA)",
    "coins.png": "no known copyright restrictions (Brooklyn Museum)",
    "clock_motion.png": "public domain (photographer Stefan van der Walt)",
    "text.png": "public domain (Wikipedia, Corner.png)",
}
#: Blender's world HDRIs (file stems), CC0 (Greg Zaal, Poly Haven)
PANORAMAS = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")
PANORAMA_SHARE = 0.6            # of the replaced backgrounds, the share that is a panorama view (else a photo crop)
#: photos are stored at most this many pixels on their shorter side, so that a crop is at most ~2x downsampled
MAX_SIDE = 512
CROP_FRACTION = (0.2, 1.0)      # crop side, as a fraction of the photo's shorter side
BRIGHTNESS = (0.35, 1.1)        # gain on a photo crop
VIEW_FOV = (25.0, 75.0)         # a panorama view's horizontal field of view, degrees
VIEW_PITCH = 12.0               # its pitch: N(0, this) degrees, clamped to +-2.5 times it
KEY = (0.09, 0.45)              # its exposure: the panorama's median luminance is mapped to this (linear)
WHITE_BALANCE = 0.15            # per-channel gain within 1 +- this


def photo_folder() -> Path:
    import skimage
    return Path(skimage.__file__).parent / "data"


def panorama_folder() -> Path:
    """Blender's world HDRIs in the installed bpy wheel, found without importing bpy."""
    import importlib.util
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpy module is not installed: its world HDRIs are the panorama backgrounds")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/datafiles/studiolights/world"))
    if not found:
        raise FileNotFoundError(f"no datafiles/studiolights/world in {spec.submodule_search_locations[0]}")
    return found[-1]


def load_photos(folder: Path | None = None, device="cpu") -> list[torch.Tensor]:
    """The PHOTOS as (3,H,W) float RGB tensors in [0,1] on ``device``, shorter side at most MAX_SIDE (grey ones
    repeated to three channels). Raises FileNotFoundError naming a photo that is missing."""
    import cv2
    from PIL import Image  # Pillow: cv2's libpng warns about two of the files' colour profiles
    folder = Path(folder) if folder else photo_folder()
    out = []
    for name in PHOTOS:
        try:
            rgb = np.asarray(Image.open(folder / name).convert("RGB"))     # grey files: 3 equal channels
        except FileNotFoundError:
            raise FileNotFoundError(f"background photo {folder / name} not found (scikit-image's data "
                                    "folder)") from None
        s = MAX_SIDE / min(rgb.shape[:2])
        if s < 1:
            rgb = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).contiguous().to(device))
    return out


def load_panoramas(folder: Path | None = None, device="cpu") -> list[torch.Tensor]:
    """The PANORAMAS as (3,H,W+2) linear RGB tensors on ``device``, row 0 the zenith, scaled so that the median
    luminance is 1, with the first and last columns repeated at the far ends (the view's sampling wraps around).
    Raises FileNotFoundError naming a panorama that is missing."""
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")   # OpenCV reads EXR only when asked (read once, at use)
    import cv2
    folder = Path(folder) if folder else panorama_folder()
    out = []
    for stem in PANORAMAS:
        bgr = cv2.imread(str(folder / f"{stem}.exr"), cv2.IMREAD_UNCHANGED)
        if bgr is None:
            raise FileNotFoundError(f"background panorama {folder / stem}.exr not found or unreadable")
        rgb = np.maximum(bgr[..., 2::-1].astype(np.float32), 0)
        rgb /= max(float(np.median(rgb @ np.float32([0.2126, 0.7152, 0.0722]))), 1e-6)
        rgb = np.concatenate([rgb[:, -1:], rgb, rgb[:, :1]], 1)
        out.append(torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(device))
    return out


def panorama_view(pano: torch.Tensor, fov: torch.Tensor, heading: torch.Tensor, pitch: torch.Tensor,
                  n: int) -> torch.Tensor:
    """(B,3,n,n) pinhole views of the equirectangular panorama ``pano`` (3,H,W+2; see load_panoramas): horizontal
    field of view ``fov``, heading (about the vertical, 0 = the panorama's centre column, positive = further
    right in it) and ``pitch`` (positive = up), all (B,) in radians; image rows run downwards. Linear values."""
    dev = pano.device
    B = len(fov)
    c = (torch.arange(n, device=dev, dtype=torch.float32) + 0.5) / n * 2 - 1          # pixel centres in [-1, 1]
    t = torch.tan(fov / 2)[:, None, None]
    x, y = c[None, None, :] * t, -c[None, :, None] * t                                # camera: x right, y up, z ahead
    x, y = x.expand(B, n, n), y.expand(B, n, n)
    cp, sp = pitch.cos()[:, None, None], pitch.sin()[:, None, None]
    y, z = y * cp + sp, -y * sp + cp                                                   # pitch about x (z = 1 before)
    az = torch.atan2(x, z) + heading[:, None, None]
    el = torch.atan2(y, torch.sqrt(x * x + z * z))
    W = pano.shape[-1] - 2
    gx = torch.remainder(az / math.pi + 1, 2) - 1                                    # azimuth in [-1, 1)
    grid = torch.stack([gx * W / (W + 2), -el / (math.pi / 2)], -1)                  # into the wrapped columns
    return F.grid_sample(pano.expand(B, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def tonemap(linear: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Exposure (``key`` (B,1,1,1) times the linear values) and an sRGB-like film curve (extended Reinhard with
    white point 4, then gamma 1/2.2) to [0,1]."""
    v = linear * key
    return (v * (1 + v / 16) / (1 + v)).clamp(0, 1) ** (1 / 2.2)


class PhotoBackgrounds:
    """Replaces a share of a batch's backgrounds with views of real panoramas and crops of real photos (see the
    module docstring)."""

    def __init__(self, device="cpu", photo_dir: Path | None = None, panorama_dir: Path | None = None):
        self.photos = load_photos(photo_dir, device)
        self.panoramas = load_panoramas(panorama_dir, device)

    def __call__(self, background: torch.Tensor, g: torch.Generator, prob: float) -> torch.Tensor:
        """``background`` (B,3,n,n) with each sample's replaced with probability ``prob``; all randomness from
        ``g`` (on the backgrounds' device), drawn for every sample whether it is replaced or not."""
        B, _, n, _ = background.shape
        dev = background.device

        def U(*shape, lo=0.0, hi=1.0):
            return _rand(g, *shape).to(dev) * (hi - lo) + lo

        on = U(B) < prob
        pano = U(B) < PANORAMA_SHARE
        which = [(U(B) * len(src)).long().clamp_max(len(src) - 1) for src in (self.photos, self.panoramas)]
        frac, cx, cy, mirror = U(B, lo=CROP_FRACTION[0], hi=CROP_FRACTION[1]), U(B), U(B), U(B) < 0.5
        gain = U(B, 1, 1, 1, lo=BRIGHTNESS[0], hi=BRIGHTNESS[1])
        fov = U(B, lo=VIEW_FOV[0], hi=VIEW_FOV[1]) * (math.pi / 180)
        heading = U(B, lo=-math.pi, hi=math.pi)
        pitch = (_randn(g, B).to(dev) * VIEW_PITCH).clamp(
            -2.5 * VIEW_PITCH, 2.5 * VIEW_PITCH) * (math.pi / 180)
        key = U(B, 1, 1, 1, lo=math.log(KEY[0]), hi=math.log(KEY[1])).exp()
        wb = U(B, 3, 1, 1, lo=1 - WHITE_BALANCE, hi=1 + WHITE_BALANCE)
        out = background.clone()
        for k, photo in enumerate(self.photos):
            i = (on & ~pano & (which[0] == k)).nonzero()[:, 0]
            if len(i):
                out[i] = photo_crop(photo, frac[i], cx[i], cy[i], n) * gain[i]
        for k, panorama in enumerate(self.panoramas):
            i = (on & pano & (which[1] == k)).nonzero()[:, 0]
            if len(i):
                out[i] = tonemap(panorama_view(panorama, fov[i], heading[i], pitch[i], n), key[i])
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
        return torch.where(on[:, None, None, None], (out * wb).clamp(0, 1), background)


def photo_crop(photo: torch.Tensor, frac: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, n: int) -> torch.Tensor:
    """(B,3,n,n) square crops of ``photo`` (3,H,W): side ``frac`` (B,) of its shorter side, centres at ``cx``,
    ``cy`` (B,) in [0,1] of the range that keeps the crop inside the photo."""
    H, W = photo.shape[1:]
    side = frac * min(H, W)                                               # crop side in photo pixels
    sx, sy = side / W, side / H                                           # normalised half-extents
    tx, ty = (cx * 2 - 1) * (1 - sx), (cy * 2 - 1) * (1 - sy)
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, tx], -1), torch.stack([z, sy, ty], -1)], -2)
    grid = F.affine_grid(theta, (len(frac), 3, n, n), align_corners=False)
    return F.grid_sample(photo.expand(len(frac), -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
