"""UV position-map layouts: which pixels of the 256x256 map are face vertices, how they connect, where the 68
landmarks sit, how the loss weighs them, and a canonical frontal shape for pose estimation.

A layout is a small versioned ``.npz`` asset in ``prn_blender/assets/layouts``. Pixel convention: pixel (x, y) is
column x, row y (row 0 at the top); its UV coordinate is ((x + 0.5) / 256, 1 - (y + 0.5) / 256) (Blender's v up).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .constants import (REGION_EYES, REGION_FACE, REGION_LANDMARK, REGION_MOUTH, REGION_NECK, REGION_NOSE,
                        RESOLUTION, WEIGHT_PRESETS)
from .paths import LAYOUTS_DIR

DEFAULT_LAYOUT = "ict-face-v2"


class LayoutError(ValueError):
    """A layout is missing, malformed, or does not match a checkpoint."""


@dataclass(frozen=True, eq=False)
class UVLayout:
    """One position-map layout.

    Attributes:
        name: versioned id, e.g. ``"ict-face-v2"`` or ``"prnet-bfm"``; checkpoints record it.
        mask: (256,256) bool, True on face pixels.
        face_ind: (N,) int64 flat indices (row-major) of the face pixels; vertex i is pixel face_ind[i].
        triangles: (T,3) int32 vertex indices, counter-clockwise seen from the front of the face.
        kpt_xy: (68,2) int32 (x=column, y=row) UV pixels of the iBUG-68 landmarks.
        regions: (256,256) uint8 region label per pixel (constants.REGION_*).
        canonical: (N,3) float32 frontal mean shape, right-handed (x to the subject's left, y up, z out of the face).
    """
    name: str
    mask: np.ndarray
    face_ind: np.ndarray
    triangles: np.ndarray
    kpt_xy: np.ndarray
    regions: np.ndarray
    canonical: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_vertices(self) -> int:
        return int(self.face_ind.size)

    @property
    def uvs(self) -> np.ndarray:
        """(N,2) float32 Blender UVs (v up) of the vertices."""
        y, x = np.divmod(self.face_ind, RESOLUTION)
        return np.stack([(x + 0.5) / RESOLUTION, 1.0 - (y + 0.5) / RESOLUTION], 1).astype(np.float32)

    @property
    def kpt_vertex(self) -> np.ndarray:
        """(68,) vertex indices of the landmark pixels."""
        flat = self.kpt_xy[:, 1].astype(np.int64) * RESOLUTION + self.kpt_xy[:, 0]
        return np.searchsorted(self.face_ind, flat)

    @property
    def mirror_vertex(self) -> np.ndarray:
        """(N,) index of each vertex's left/right mirror (nearest vertex to its mirrored canonical position)."""
        if "_mirror" not in self.meta:
            c = self.canonical.astype(np.float32)
            q = c * np.array([-1.0, 1.0, 1.0], np.float32)
            try:                    # scipy is a development dependency; Blender's Python may lack it
                from scipy.spatial import cKDTree
                idx = cKDTree(c).query(q)[1]
            except ImportError:
                import cv2
                index = cv2.flann_Index(c, {"algorithm": 1, "trees": 4})
                idx = index.knnSearch(q, 1, params={"checks": 64})[0][:, 0]
            self.meta["_mirror"] = np.asarray(idx, np.int64)
        return self.meta["_mirror"]

    def weight_mask(self, preset: str | tuple = "paper") -> np.ndarray:
        """(256,256) float32 loss weights from a named preset or a (landmark, eyes/nose/mouth, face, neck) tuple,
        normalized so the largest weight is 1."""
        w = WEIGHT_PRESETS[preset] if isinstance(preset, str) else tuple(preset)
        lut = np.zeros(6, np.float32)
        lut[REGION_LANDMARK], lut[[REGION_EYES, REGION_NOSE, REGION_MOUTH]], lut[REGION_FACE], lut[REGION_NECK] = w
        out = lut[self.regions] * self.mask
        return out / max(float(out.max()), 1e-12)

    def vertices(self, pos: np.ndarray) -> np.ndarray:
        """(N,3) vertices from a (256,256,3) position map."""
        return pos.reshape(-1, 3)[self.face_ind]

    def landmarks(self, pos: np.ndarray) -> np.ndarray:
        """(68,3) landmarks from a (256,256,3) position map."""
        return pos[self.kpt_xy[:, 1], self.kpt_xy[:, 0]]

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, name=self.name, mask=self.mask, face_ind=self.face_ind.astype(np.int32),
                            triangles=self.triangles.astype(np.int32), kpt_xy=self.kpt_xy.astype(np.int32),
                            regions=self.regions.astype(np.uint8), canonical=self.canonical.astype(np.float32),
                            meta=np.array(repr({k: v for k, v in self.meta.items() if not k.startswith("_")})))

    @classmethod
    def from_file(cls, path: str | Path) -> "UVLayout":
        import ast
        try:
            d = np.load(path, allow_pickle=False)
            lay = cls(name=str(d["name"]), mask=d["mask"].astype(bool), face_ind=d["face_ind"].astype(np.int64),
                      triangles=d["triangles"].astype(np.int32), kpt_xy=d["kpt_xy"].astype(np.int32),
                      regions=d["regions"], canonical=d["canonical"].astype(np.float32),
                      meta=ast.literal_eval(str(d["meta"])))
        except (OSError, KeyError, ValueError) as e:
            raise LayoutError(f"cannot read UV layout {path}: {e}") from e
        lay.validate()
        return lay

    def validate(self) -> None:
        """Raise LayoutError if the arrays are inconsistent."""
        n = self.face_ind.size
        ok = (self.mask.shape == (RESOLUTION, RESOLUTION) and np.array_equal(np.flatnonzero(self.mask), self.face_ind)
              and self.canonical.shape == (n, 3) and self.kpt_xy.shape == (68, 2)
              and self.triangles.min() >= 0 and self.triangles.max() < n
              and self.mask[self.kpt_xy[:, 1], self.kpt_xy[:, 0]].all())
        if not ok:
            raise LayoutError(f"UV layout {self.name!r} is inconsistent")


def available_layouts() -> list[str]:
    return sorted(p.stem for p in LAYOUTS_DIR.glob("*.npz"))


@lru_cache(maxsize=4)
def load_layout(name: str = DEFAULT_LAYOUT) -> UVLayout:
    """Load a shipped layout by name (or a path to a layout ``.npz``)."""
    p = Path(name)
    if p.suffix != ".npz":
        p = LAYOUTS_DIR / f"{name}.npz"
    if not p.exists():
        raise LayoutError(f"UV layout {name!r} not found (available: {', '.join(available_layouts()) or 'none'})")
    return UVLayout.from_file(p)


def grid_triangles(mask: np.ndarray, keep_edge=None) -> np.ndarray:
    """Triangles from the mask grid: two per 2x2 block of valid pixels, one per block with three.

    Returns (T,3) indices into ``flatnonzero(mask)``, all with the same winding in image space (x right, y down):
    counter-clockwise when seen with y up, i.e. facing the viewer for a face whose UV map is not mirrored.
    ``keep_edge(a, b)`` (vectorized over flat pixel indices) may veto triangles whose edges should not exist.
    """
    h, w = mask.shape
    idx = -np.ones(h * w, np.int64)
    flat = np.flatnonzero(mask)
    idx[flat] = np.arange(flat.size)
    y, x = np.mgrid[0:h - 1, 0:w - 1]
    p00 = (y * w + x).ravel()
    p01, p10, p11 = p00 + 1, p00 + w, p00 + w + 1
    v = [mask.ravel()[p] for p in (p00, p01, p10, p11)]
    tris = []
    # full quads: (00,10,11) and (00,11,01); 3-valid blocks: the one triangle that exists
    cands = [
        ((p00, p10, p11), v[0] & v[2] & v[3]),
        ((p00, p11, p01), v[0] & v[3] & v[1]),
        ((p00, p10, p01), v[0] & v[2] & v[1] & ~v[3]),
        ((p01, p10, p11), v[1] & v[2] & v[3] & ~v[0]),
    ]
    for (a, b, c), ok in cands:
        if keep_edge is not None:
            ok = ok & keep_edge(a, b) & keep_edge(b, c) & keep_edge(c, a)
        tris.append(np.stack([idx[a[ok]], idx[b[ok]], idx[c[ok]]], 1))
    return np.concatenate(tris).astype(np.int32)
