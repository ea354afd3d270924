"""Image loading: any path (non-ASCII too) or array (uint8/uint16/float; gray/RGB/RGBA) -> float32 RGB in [0,1].

Pixels are kept as stored: an EXIF orientation is not applied, as Blender does not apply it to the photo it shows
behind the face (checked with bpy 4.5), so results line up with it. ``upright_turns`` says how to turn a photo
whose EXIF says it is stored sideways or upside down (phone portraits), so the face can be found upright.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

#: file name endings taken for photos: by the CLI when given a folder, by ``blend`` to tell a photo from a video,
#: by eval's folders of photos
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class ImageError(ValueError):
    """The image cannot be read or has an unusable format."""


def load_image(src) -> np.ndarray:
    """(H,W,3) float32 RGB in [0,1] from a path or an array (arrays are taken as RGB/RGBA/gray)."""
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.is_file():
            raise ImageError(f"cannot read image {p}: file not found")
        data = np.fromfile(str(p), np.uint8)          # works for non-ASCII paths, unlike cv2.imread
        if data.size == 0:
            raise ImageError(f"cannot read image {p}: file is empty")
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise ImageError(f"cannot read image {p}: not a decodable image (truncated or unsupported format)")
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        elif img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        img = np.asarray(src)
    return to_float_rgb(img)


#: EXIF orientation -> counter-clockwise quarter turns (``np.rot90``'s k) that make the stored pixels upright; the
#: mirrored orientations (2, 4, 5, 7) are left as stored
_EXIF_TURNS = {3: 2, 6: 3, 8: 1}


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) in JPEG bytes (the file's start is enough), 1 when there is none or it cannot be
    read."""
    if data[:2] != b"\xff\xd8":
        return 1
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):                          # end of image / start of scan: no metadata after
            break
        size = struct.unpack(">H", data[i + 2:i + 4])[0]
        seg = data[i + 4:i + 2 + size]
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            t = seg[6:]
            end = {b"II": "<", b"MM": ">"}.get(t[:2])
            if end is None or len(t) < 8:
                return 1
            ifd = struct.unpack(end + "I", t[4:8])[0]
            if ifd + 2 > len(t):
                return 1
            for k in range(struct.unpack(end + "H", t[ifd:ifd + 2])[0]):
                e = t[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
                if len(e) < 12:
                    break
                tag, typ = struct.unpack(end + "HH", e[:4])
                if tag == 0x0112 and typ == 3:                     # Orientation, SHORT
                    v = struct.unpack(end + "H", e[8:10])[0]
                    return v if 1 <= v <= 8 else 1
            return 1
        i += 2 + size
    return 1


def upright_turns(path) -> int:
    """Counter-clockwise quarter turns (0-3, ``np.rot90``'s k) that make the image file at ``path`` upright, from
    its EXIF orientation (0 without one, for mirrored orientations, or when the file cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 17)
    except OSError:
        return 0
    return _EXIF_TURNS.get(exif_orientation(head), 0)


def to_float_rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        f = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        f = img.astype(np.float32) / 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        f = img.astype(np.float32)
        if f.size and np.nanmax(f) > 1.5:       # float data in 0..255
            f = f / 255.0
    else:
        raise ImageError(f"unsupported image dtype {img.dtype}")
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, 2)
    elif f.ndim == 3 and f.shape[2] == 1:
        f = np.repeat(f, 3, 2)
    elif f.ndim == 3 and f.shape[2] == 4:
        a = f[..., 3:]
        f = f[..., :3] * a + (1 - a) * 0.5      # composite transparency on grey
    elif not (f.ndim == 3 and f.shape[2] == 3):
        raise ImageError(f"unsupported image shape {img.shape}")
    if min(f.shape[:2]) < 16:
        raise ImageError(f"image too small ({f.shape[1]}x{f.shape[0]}); need at least 16x16 pixels")
    return np.ascontiguousarray(np.clip(np.nan_to_num(f), 0, 1))


def save_image(path, rgb: np.ndarray) -> None:
    """Write float RGB [0,1] (or RGBA) as 8-bit PNG/JPEG (non-ASCII paths too)."""
    a = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    a = cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA if a.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(Path(path).suffix or ".png", a)
    if not ok:
        raise ImageError(f"cannot encode {path}")
    buf.tofile(str(path))
