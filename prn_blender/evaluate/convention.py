"""How well a layout's 68 landmark definition matches a 3D landmark annotation convention, without any network.

For each annotated 68-point 3D shape, ``synth.uvmap.fit_landmarks`` fits the ICT model (identity, expression,
similarity) with the layout's landmark pixels; the NME2D (metrics.nme) of the best fit is the error floor that a
perfect ICT-based predictor would still have against that annotation. The annotations are AFLW2000-3D's 2,000
ground-truth shapes minus the images used for evaluation (``images/``), so the evaluation images are never seen.

``python -m prn_blender.evaluate.convention [--layouts A B] [--every K]`` prints the floor per layout and yaw bucket.
"""
from __future__ import annotations

import argparse

import numpy as np

from ..core.layout import UVLayout, load_layout
from ..core.paths import shared_dir
from ..synth.ict import load_ict
from ..synth.uvmap import LAYOUT_NAME, fit_landmarks, rasterize_face_uv
from . import metrics as M

AFLW_DIR = "aflw2000-3d"


def annotation_shapes(shared=None, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """AFLW2000-3D's 3D landmarks (n,68,3) in image pixels (x right, y down) and |yaw| (n,) in degrees, without the
    evaluation images, every ``every``-th row."""
    d = shared_dir(shared) / AFLW_DIR
    pts = np.load(d / "AFLW2000-3D.pts68.npy").transpose(0, 2, 1)
    yaw = np.abs(np.load(d / "AFLW2000-3D.pose.npy"))
    held = {s["index"] for s in M.load_aflw2000(d)}
    rows = np.array([i for i in range(len(pts)) if i not in held])[::every]
    return pts[rows].astype(np.float64), yaw[rows]


def landmark_floor(layout: UVLayout, shapes: np.ndarray, shared=None) -> np.ndarray:
    """(n,) NME2D % of the best ICT fit with ``layout``'s landmark pixels to each of ``shapes`` (n,68,3)."""
    ict = load_ict(shared=shared)
    g = rasterize_face_uv(ict)
    if not np.array_equal(g.mask, layout.mask):
        raise ValueError(f"layout {layout.name!r} is not an ICT-FaceKit tile-0 layout")
    pixels = layout.kpt_vertex
    flip = np.array([1.0, -1.0, 1.0])         # image frame (y down) -> right-handed (y up)
    out = []
    for gt in shapes:
        f = fit_landmarks(ict, g, pixels, gt * flip)
        out.append(M.nme(f.fitted * flip, gt))
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", nargs="+", default=[LAYOUT_NAME], help="ICT layout names or .npz paths")
    ap.add_argument("--every", type=int, default=1, help="use every K-th annotation")
    ap.add_argument("--shared", help="development data folder (default: $PRN_BLENDER_SHARED or ../shared)")
    a = ap.parse_args(argv)
    shapes, yaw = annotation_shapes(a.shared, a.every)
    print(f"{len(shapes)} AFLW2000-3D annotations (evaluation images excluded)")
    for name in a.layouts:
        e = landmark_floor(load_layout(name), shapes, a.shared)
        b = M.yaw_buckets(e, yaw)
        print(f"{name}: floor NME2D {b['all']:.2f} %  (yaw 0-30 {b['0-30']:.2f}, 30-60 {b['30-60']:.2f}, "
              f"60-90 {b['60-90']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
