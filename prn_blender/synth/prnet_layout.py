"""The PRNet (BFM) position-map layout ``prnet-bfm``, for the official PRNet weights.

Built from PRNet's released ``uv-data`` (MIT licensed, in the development data folder ``prnet/uv-data``):

* mask: ``uv_face_mask.png > 0`` (43,867 pixels; checked against ``face_ind.txt``);
* triangles: the mask grid (``layout.grid_triangles``; PRNet's ``triangles.txt`` is not used), wound
  counter-clockwise seen from the front of ``canonical``;
* kpt_xy: ``uv_kpt_ind.txt`` (row 0 = x, row 1 = y);
* regions: ``uv_weight_mask.png`` levels 255 / 64 / 48 / 0 (landmark : eyes-nose-mouth : face : neck, anti-aliased
  values go to the nearest level) -> REGION_LANDMARK / REGION_EYES (the whole eyes-nose-mouth area) / REGION_FACE /
  REGION_NECK; pixels outside the mask are REGION_NECK like the other layouts;
* canonical: ``canonical_vertices.npy`` is in an image-like frame (x to the subject's left, y DOWN, z out of the face,
  PRNet pixel units). It is converted to the layout convention (y up) and to centimetres like ``ict-face-v2``:
  a scale + translation (no rotation; both shapes are frontal) that best maps its 68 landmarks onto those of the
  reference layout ``ict-face-v2`` (so both layouts share one head frame; the Blender conversion assumes cm).

Run ``python -m prn_blender.synth.prnet_layout`` to regenerate ``assets/layouts/prnet-bfm.npz``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.constants import REGION_EYES, REGION_FACE, REGION_LANDMARK, REGION_NECK, RESOLUTION
from ..core.layout import LayoutError, UVLayout, grid_triangles, load_layout
from ..core.paths import LAYOUTS_DIR, shared_dir

LAYOUT_NAME = "prnet-bfm"
N_VERTICES = 43867
REFERENCE_LAYOUT = "ict-face-v2"
#: weight-mask grey levels (16:4:3:0 scaled) and the region each stands for
WEIGHT_LEVELS = ((0, REGION_NECK), (48, REGION_FACE), (64, REGION_EYES), (255, REGION_LANDMARK))


def _read_gray(path: Path) -> np.ndarray:
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise LayoutError(f"cannot read {path}")
    if img.ndim == 3:
        img = img[..., 0]
    if img.shape != (RESOLUTION, RESOLUTION):
        raise LayoutError(f"{path} is {img.shape}, expected {RESOLUTION}x{RESOLUTION}")
    return img


def _regions(weight: np.ndarray, mask: np.ndarray) -> np.ndarray:
    levels = np.array([lv for lv, _ in WEIGHT_LEVELS], np.float32)
    labels = np.array([lab for _, lab in WEIGHT_LEVELS], np.uint8)
    nearest = np.abs(weight.astype(np.float32)[..., None] - levels).argmin(-1)
    return np.where(mask, labels[nearest], REGION_NECK).astype(np.uint8)


def _canonical_to_cm(raw: np.ndarray, kpt_vertex: np.ndarray, reference: UVLayout) -> tuple[np.ndarray, dict]:
    """Flip y (image frame -> y up) and fit scale s, translation t: s * c + t ~ reference landmarks (least squares)."""
    c = raw.astype(np.float64) * np.array([1.0, -1.0, 1.0])
    a = c[kpt_vertex]
    b = reference.canonical[reference.kpt_vertex].astype(np.float64)
    a0, b0 = a - a.mean(0), b - b.mean(0)
    s = float((a0 * b0).sum() / (a0 * a0).sum())
    t = b.mean(0) - s * a.mean(0)
    rms = float(np.sqrt(((s * a + t - b) ** 2).sum(1).mean()))
    return (s * c + t).astype(np.float32), {"cm_per_unit": round(s, 8), "offset_cm": [round(float(v), 6) for v in t],
                                            "landmark_fit_rms_cm": round(rms, 4)}


def build_prnet_layout(shared: str | Path | None = None) -> UVLayout:
    """Build the ``prnet-bfm`` layout from ``<shared>/prnet/uv-data`` (``shared``: development data folder)."""
    d = shared_dir(shared) / "prnet" / "uv-data"
    mask = _read_gray(d / "uv_face_mask.png") > 0
    face_ind = np.flatnonzero(mask).astype(np.int64)
    if face_ind.size != N_VERTICES:
        raise LayoutError(f"uv_face_mask.png has {face_ind.size} face pixels, expected {N_VERTICES}")
    if not np.array_equal(np.loadtxt(d / "face_ind.txt").astype(np.int64), face_ind):
        raise LayoutError("face_ind.txt differs from flatnonzero(uv_face_mask.png)")
    kpt = np.loadtxt(d / "uv_kpt_ind.txt").astype(np.int64)
    if kpt.shape != (2, 68):
        raise LayoutError(f"uv_kpt_ind.txt has shape {kpt.shape}, expected (2, 68)")
    kpt_xy = kpt.T.astype(np.int32)  # (68,2): x = column (row 0 of the file), y = row (row 1)
    regions = _regions(_read_gray(d / "uv_weight_mask.png"), mask)

    raw = np.load(d / "canonical_vertices.npy")
    if raw.shape != (N_VERTICES, 3):
        raise LayoutError(f"canonical_vertices.npy has shape {raw.shape}, expected ({N_VERTICES}, 3)")
    kpt_vertex = np.searchsorted(face_ind, kpt_xy[:, 1].astype(np.int64) * RESOLUTION + kpt_xy[:, 0])
    # the file is y-down (chin below the nose in image rows); check before flipping
    if not raw[kpt_vertex[8], 1] > raw[kpt_vertex[30], 1]:
        raise LayoutError("canonical_vertices.npy is not in the expected y-down image frame")
    canonical, fit = _canonical_to_cm(raw, kpt_vertex, load_layout(REFERENCE_LAYOUT))

    tris = grid_triangles(mask)
    v = canonical.astype(np.float64)
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    front = float((n[:, 2] > 0).mean())
    if front < 0.5:
        tris = tris[:, [0, 2, 1]]
        front = 1.0 - front
    lay = UVLayout(name=LAYOUT_NAME, mask=mask, face_ind=face_ind, triangles=np.ascontiguousarray(tris, np.int32),
                   kpt_xy=kpt_xy, regions=regions, canonical=canonical,
                   meta={"source": "PRNet uv-data (YadiraF/PRNet, MIT): uv_face_mask, uv_kpt_ind, uv_weight_mask, "
                                   "canonical_vertices",
                         "units": "canonical in cm, x to subject's left, y up, z out of the face",
                         "canonical_fit": f"y flipped, then scale+offset onto {REFERENCE_LAYOUT} landmarks",
                         **fit, "front_facing_fraction": round(front, 4),
                         "builder": "prn_blender.synth.prnet_layout", "version": 1})
    lay.validate()
    return lay


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=None, help="development data folder (default: ../shared)")
    ap.add_argument("--out", default=str(LAYOUTS_DIR / f"{LAYOUT_NAME}.npz"))
    a = ap.parse_args(argv)
    lay = build_prnet_layout(a.shared)
    lay.save(a.out)
    print(f"wrote {a.out}: {lay.n_vertices} vertices, {len(lay.triangles)} triangles, meta {lay.meta}")


if __name__ == "__main__":
    main()
