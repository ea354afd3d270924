"""Eye and mouth refinement: a second, small network that redraws the eyes, brows and mouth of a position map from
high-detail patches of the photo.

The main network (core.network) sees the whole face in a 256-pixel crop and draws close to the average expression
there (evaluate.expression_response). This stage crops one patch per region (each eye with its brow, the mouth),
framed by the first pass's 68 landmarks, and predicts where every UV pixel of that region's window lies in the
patch; those image positions replace the first pass's x, y inside the window, faded out towards its border (z is
kept). It is trained on the same synthetic scenes (train.refine), with the frames jittered as a first pass misplaces
them.

Frames: every patch is a square of ``side`` image pixels centred at ``(cx, cy)``, turned by ``angle`` radians (the
eye line's angle in the image, y down); its PATCH x PATCH pixels sample it at pixel centres. Patch coordinates
``q`` run from -0.5 to 0.5 across the square (x right, y down, in the turned frame). Image coordinates are pixels,
y down, pixel centres at integers (as crop.warp and the position maps).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layout import UVLayout
from .paths import WEIGHTS_DIR

#: The shipped refiner (train.refine; MODEL_CARD.md).
DEFAULT_REFINER = WEIGHTS_DIR / "prn-ict-refine.safetensors"
FORMAT = "prn_blender-refine-1"
#: Side of a region patch in pixels.
PATCH = 64
#: Regions: name -> (iBUG-68 landmarks the UV window covers, the landmarks the patch is centred on, the centre's
#: offset in units of the face size along the eye line and across it (down), the patch side in face sizes).
#: Face size = hypot(eye-centre distance, eye-line-centre to mouth-centre distance): stable under yaw and pitch.
REGIONS = {
    "eye_r": (tuple(range(17, 22)) + tuple(range(36, 42)), tuple(range(36, 42)), (0.0, -0.10), 0.72),
    "eye_l": (tuple(range(22, 27)) + tuple(range(42, 48)), tuple(range(42, 48)), (0.0, -0.10), 0.72),
    "mouth": (tuple(range(48, 68)), tuple(range(48, 68)), (0.0, 0.03), 0.80),
}
#: What each region redraws, in words.
REGION_NAMES = {"eye_r": "the right eye and brow", "eye_l": "the left eye and brow", "mouth": "the mouth"}
#: UV pixels added around the landmarks' bounding box to make a region's window, and the width of the fade to the
#: first pass's surface at the window's border.
WINDOW_MARGIN = 10
WINDOW_FADE = 6
#: Features per region before its linear head (the head is a basis of this many window shapes).
EMBED = 128


def face_size(lms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(face size (B,), eye line angle (B,) radians) from (B,68,2) image-pixel landmarks."""
    er, el, mo = lms[:, 36:42].mean(1), lms[:, 42:48].mean(1), lms[:, 48:68].mean(1)
    e = el - er
    iod = e.norm(dim=-1)
    em = (mo - (er + el) / 2).norm(dim=-1)
    return torch.hypot(iod, em), torch.atan2(e[:, 1], e[:, 0])


def patch_frames(lms: torch.Tensor, regions=tuple(REGIONS)) -> torch.Tensor:
    """(B,R,4) frames (cx, cy, side, angle) of ``regions``' patches from (B,68,2) image-pixel landmarks."""
    s, a = face_size(lms)
    ca, sa = torch.cos(a), torch.sin(a)
    out = []
    for name in regions:
        _, centre, (ox, oy), side = REGIONS[name]
        c = lms[:, list(centre)].mean(1)
        cx = c[:, 0] + s * (ox * ca - oy * sa)
        cy = c[:, 1] + s * (ox * sa + oy * ca)
        out.append(torch.stack([cx, cy, s * side, a], -1))
    return torch.stack(out, 1)


def jitter_frames(frames: torch.Tensor, g: torch.Generator, shift: float = 0.06, scale: float = 0.08,
                  turn_deg: float = 4.0) -> torch.Tensor:
    """Frames moved as a first pass's landmarks misplace them: centre by N(0, shift * side) per axis, side by
    exp(N(0, scale)), angle by N(0, turn_deg) degrees, each patch independently."""
    n = torch.randn(*frames.shape[:-1], 4, generator=g).to(frames)
    side = frames[..., 2]
    return torch.stack([frames[..., 0] + n[..., 0] * shift * side, frames[..., 1] + n[..., 1] * shift * side,
                        side * torch.exp(n[..., 2] * scale), frames[..., 3] + n[..., 3] * np.deg2rad(turn_deg)], -1)


def to_image(q: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Patch coordinates (..., 2, H, W) -> image pixels, with (..., 4) frames."""
    cx, cy, side, a = (frames[..., i, None, None] for i in range(4))
    ca, sa = torch.cos(a), torch.sin(a)
    x, y = q[..., 0, :, :] * side, q[..., 1, :, :] * side
    return torch.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], -3)


def to_patch(p: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Image pixels (..., 2, H, W) -> patch coordinates (the inverse of to_image)."""
    cx, cy, side, a = (frames[..., i, None, None] for i in range(4))
    ca, sa = torch.cos(a), torch.sin(a)
    x, y = p[..., 0, :, :] - cx, p[..., 1, :, :] - cy
    return torch.stack([(x * ca + y * sa) / side, (-x * sa + y * ca) / side], -3)


def _patch_grid(frames: torch.Tensor) -> torch.Tensor:
    """(..., PATCH, PATCH, 2) image pixels sampled by each frame's patch pixels."""
    t = (torch.arange(PATCH, dtype=frames.dtype, device=frames.device) + 0.5) / PATCH - 0.5
    q = torch.stack(torch.broadcast_tensors(t[None, :], t[:, None]), 0)           # (2, P, P): x, y
    return to_image(q.expand(*frames.shape[:-1], 2, PATCH, PATCH), frames).movedim(-3, -1)


def sample_patches(img: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """(B,R,3,PATCH,PATCH) patches of (B,3,H,W) images at (B,R,4) frames (bilinear, zeros outside)."""
    B, R = frames.shape[:2]
    H, W = img.shape[-2:]
    p = _patch_grid(frames).reshape(B, R * PATCH, PATCH, 2)
    grid = torch.stack([(2 * p[..., 0] + 1) / W - 1, (2 * p[..., 1] + 1) / H - 1], -1)
    out = F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(B, 3, R, PATCH, PATCH).transpose(1, 2)


def crop_patch(img: np.ndarray, frame) -> np.ndarray:
    """One (PATCH,PATCH,C) patch of an (H,W,C) image at a (4,) frame, as sample_patches reads it; the image is
    Gaussian-filtered first where the patch shrinks it (sigma = half the shrink factor, on the frame's bounding box
    only), so a large face's patch is not aliased."""
    cx, cy, side, a = (float(v) for v in frame)
    k = side / PATCH                                # image pixels per patch pixel
    ca, sa = np.cos(a) * k, np.sin(a) * k
    # patch pixel (j, i) -> image p = c + k R (j + 0.5 - P/2, i + 0.5 - P/2)
    o = 0.5 - PATCH / 2
    M = np.array([[ca, -sa, cx + ca * o - sa * o], [sa, ca, cy + sa * o + ca * o]])
    src, off = img, np.zeros(2)
    if k > 1.5:
        r = int(np.ceil(side * 0.75 + 4 * k))
        x0, y0 = max(int(cx) - r, 0), max(int(cy) - r, 0)
        x1, y1 = min(int(cx) + r + 1, img.shape[1]), min(int(cy) + r + 1, img.shape[0])
        if x1 > x0 and y1 > y0:
            src = cv2.GaussianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), (0, 0), 0.5 * k)
            off = np.array([x0, y0], float)
    M[:, 2] -= off
    return cv2.warpAffine(src, M, (PATCH, PATCH), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(PATCH, PATCH, -1)


@dataclass(frozen=True)
class Window:
    """A region's UV window: columns [u0, u1), rows [v0, v1) of the position map."""
    u0: int
    v0: int
    u1: int
    v1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.v1 - self.v0, self.u1 - self.u0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.v0, self.v1), slice(self.u0, self.u1)


def region_windows(layout: UVLayout, regions=tuple(REGIONS), margin: int = WINDOW_MARGIN) -> list[Window]:
    """Each region's UV window: its landmarks' UV pixels' bounding box grown by ``margin``."""
    n = layout.mask.shape[0]
    out = []
    for name in regions:
        xy = layout.kpt_xy[list(REGIONS[name][0])]
        lo, hi = xy.min(0) - margin, xy.max(0) + margin + 1
        out.append(Window(int(max(lo[0], 0)), int(max(lo[1], 0)), int(min(hi[0], n)), int(min(hi[1], n))))
    return out


def window_weight(layout: UVLayout, w: Window, fade: int = WINDOW_FADE) -> np.ndarray:
    """(h,w) float32 blend weight of a window: 1 inside, falling linearly to 0 at its border over ``fade`` pixels,
    0 off the layout's face."""
    h, wd = w.shape
    yy = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
    xx = np.minimum(np.arange(wd), np.arange(wd)[::-1])[None, :]
    ramp = np.clip((np.minimum(yy, xx) + 0.5) / fade, 0, 1)
    return (ramp * layout.mask[w.slices]).astype(np.float32)


class RefineNet(nn.Module):
    """Patches (B,R,3,PATCH,PATCH) in [0,1] -> per region (B,2,h,w) patch coordinates of its window's UV pixels.

    A shared convolutional encoder (stride-2 stages down to 4 x 4) and one linear head per region; ``shapes`` are
    the windows' (h, w)."""

    def __init__(self, shapes: list[tuple[int, int]], width: int = 32):
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        self.width = width
        chans = [width, width * 2, width * 4, width * 4, width * 4]
        layers, cin = [], 3
        for i, c in enumerate(chans):                     # 64 -> 32 -> 16 -> 8 -> 4, then one stage at 4
            layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, 2 if i < 4 else 1, 1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            cin = c
        self.encoder = nn.Sequential(*layers)
        feat = chans[-1] * (PATCH // 16) ** 2
        self.embed = nn.ModuleList([nn.Sequential(nn.Linear(feat, EMBED), nn.ReLU(inplace=True))
                                    for _ in self.shapes])
        self.heads = nn.ModuleList([nn.Linear(EMBED, 2 * h * w) for h, w in self.shapes])
        for hd in self.heads:                              # small start: the output begins near its bias
            nn.init.normal_(hd.weight, std=1e-3)
            nn.init.zeros_(hd.bias)

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        B, R = patches.shape[:2]
        f = self.encoder(patches.flatten(0, 1)).flatten(1).reshape(B, R, -1)
        return [hd(em(f[:, r])).reshape(B, 2, *self.shapes[r])
                for r, (em, hd) in enumerate(zip(self.embed, self.heads))]


def save_refiner(model: RefineNet, path, regions, windows: list[Window], layout: str, meta: dict) -> Path:
    """Write a refiner's weights (float16) and what it needs to run: regions, windows, layout, provenance."""
    from safetensors.torch import save_file
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
          for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    md = {"format": FORMAT, "width": str(model.width), "layout": layout,
          "regions": json.dumps(list(regions)), "windows": json.dumps([list(vars(w).values()) for w in windows]),
          "meta": json.dumps(meta, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=md)
    os.replace(tmp, path)
    return path


class Refiner:
    """Runs a trained RefineNet on a position map in image pixels (see the module docstring)."""

    def __init__(self, path, layout: UVLayout, device="cpu"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        from .weights import WeightsError
        path = Path(path)
        try:
            with safe_open(str(path), "pt") as f:
                md = dict(f.metadata() or {})
            sd = load_file(str(path))
        except Exception as e:
            raise WeightsError(f"cannot read refiner weights {path}: {e}") from e
        if md.get("format") != FORMAT or md.get("layout") != layout.name:
            raise WeightsError(f"{path.name} is not a refiner for UV layout {layout.name!r}")
        self.regions = json.loads(md["regions"])
        self.windows = [Window(*w) for w in json.loads(md["windows"])]
        self.meta = json.loads(md.get("meta", "{}"))
        self.model = RefineNet([w.shape for w in self.windows], int(md["width"]))
        self.model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.layout = layout
        self.weights = [window_weight(layout, w)[..., None] for w in self.windows]

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``pos`` (256,256,3) in image pixels of ``img`` (H,W,3 float in [0,1]) -> a refined copy."""
        lms = torch.from_numpy(self.layout.landmarks(pos)[None, :, :2].astype(np.float32))
        frames = patch_frames(lms, self.regions)[0]
        patches = np.stack([crop_patch(img, f.numpy()) for f in frames])
        x = torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))[None].float().to(self.device)
        out = pos.copy()
        for r, q in enumerate(self.model(x)):
            xy = to_image(q[0].cpu(), frames[r]).numpy().transpose(1, 2, 0)
            sl = self.windows[r].slices
            wt = self.weights[r]
            out[sl + (slice(0, 2),)] = wt * xy + (1 - wt) * pos[sl + (slice(0, 2),)]
        return out
