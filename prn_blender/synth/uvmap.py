"""The project's own position-map layout ``ict-face-v1``, built from ICT-FaceKit's tile-0 face UVs.

``rasterize_face_uv`` maps every UV pixel centre to an ICT face triangle and barycentrics. The layout asset keeps
only what inference needs (mask, triangles, landmarks, regions, canonical shape); the data engine recomputes the
(pixel -> triangle, barycentrics) gather from the model, deterministically, and checks it against the asset's mask.
Run ``python -m prn_blender.synth.uvmap`` to regenerate ``assets/layouts/ict-face-v1.npz``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from ..core.constants import (REGION_EYES, REGION_FACE, REGION_LANDMARK, REGION_MOUTH, REGION_NECK, REGION_NOSE,
                              RESOLUTION)
from ..core.layout import UVLayout, grid_triangles
from ..core.paths import LAYOUTS_DIR
from .ict import FACE_VERTS, ICTModel, load_ict

LAYOUT_NAME = "ict-face-v1"


@dataclass(frozen=True, eq=False)
class UVGather:
    """Per face pixel: the ICT vertex ids (N,3) of its triangle and barycentrics (N,3). Position map = gather."""
    mask: np.ndarray
    vids: np.ndarray
    bary: np.ndarray

    def apply(self, verts: np.ndarray) -> np.ndarray:
        """(..., V, 3) model vertices -> (..., N, 3) values at the face pixels."""
        return (verts[..., self.vids, :] * self.bary[..., None]).sum(-2)


def vertex_uv(ict: ICTModel) -> np.ndarray:
    """(FACE_VERTS,2) tile-0 UV per face vertex (the first UV seen for seam vertices)."""
    t, tu = ict.triangles(FACE_VERTS)
    out = np.full((FACE_VERTS, 2), np.nan, np.float32)
    out[t[::-1].ravel()] = ict.uv[tu[::-1].ravel()]
    return out


def uv_to_pixel(uv: np.ndarray) -> np.ndarray:
    """UV (v up) -> continuous pixel coords (x right, y down) with pixel centres at integers."""
    return np.stack([uv[..., 0] * RESOLUTION - 0.5, (1.0 - uv[..., 1]) * RESOLUTION - 0.5], -1)


def rasterize_face_uv(ict: ICTModel) -> UVGather:
    """Rasterize the Face geometry's tile-0 UV triangles at 256x256 pixel centres."""
    t, tu = ict.triangles(FACE_VERTS)
    P = uv_to_pixel(ict.uv[tu])                              # (T,3,2)
    n = RESOLUTION
    tri_of = -np.ones(n * n, np.int64)
    bary = np.zeros((n * n, 3), np.float32)
    lo = np.clip(np.floor(P.min(1)).astype(int), 0, n - 1)
    hi = np.clip(np.ceil(P.max(1)).astype(int), 0, n - 1)
    for k in range(len(t)):
        (x0, y0), (x1, y1) = lo[k], hi[k]
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        a, b, c = P[k]
        det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
        if abs(det) < 1e-12:
            continue
        l1 = ((xs - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (ys - a[1])) / det
        l2 = ((b[0] - a[0]) * (ys - a[1]) - (xs - a[0]) * (b[1] - a[1])) / det
        l0 = 1 - l1 - l2
        inside = (l0 >= -1e-6) & (l1 >= -1e-6) & (l2 >= -1e-6)
        flat = (ys * n + xs)[inside]
        tri_of[flat] = k
        bary[flat] = np.stack([l0[inside], l1[inside], l2[inside]], 1)
    mask = (tri_of >= 0).reshape(n, n)
    sel = tri_of >= 0
    return UVGather(mask=mask, vids=t[tri_of[sel]], bary=np.clip(bary[sel], 0, 1))


def _hull_mask(pts: np.ndarray, margin: float) -> np.ndarray:
    import cv2
    m = np.zeros((RESOLUTION, RESOLUTION), np.uint8)
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    cv2.fillConvexPoly(m, hull, 1)
    if margin > 0:
        k = int(2 * margin + 1)
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return m.astype(bool)


def build_ict_layout(ict: ICTModel) -> UVLayout:
    g = rasterize_face_uv(ict)
    canonical = g.apply(ict.neutral)
    n = RESOLUTION
    face_ind = np.flatnonzero(g.mask)

    # Do not connect grid neighbours across the mouth slit or the eye holes: veto edges that stretch when the
    # jaw opens and the eyes widen.
    opened = ict.shape(expression=_one_hot(ict, {"jawOpen": 1.0, "eyeWide_L": 1.0, "eyeWide_R": 1.0}))
    pos_o = np.zeros((n * n, 3), np.float32)
    pos_o[face_ind] = g.apply(opened)
    pos_c = np.zeros((n * n, 3), np.float32)
    pos_c[face_ind] = canonical

    def keep(a, b):
        lo = np.linalg.norm(pos_c[a] - pos_c[b], axis=-1)
        lo2 = np.linalg.norm(pos_o[a] - pos_o[b], axis=-1)
        return (lo2 < 0.6) & (lo < 0.6)          # cm; grid spacing is ~0.1 cm

    tris = grid_triangles(g.mask, keep)
    # orient outward (+z on the frontal face)
    v = canonical
    nrm = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    front = v[tris].mean(1)[:, 2] > np.percentile(v[:, 2], 60)
    if (nrm[front, 2] < 0).mean() > 0.5:
        tris = tris[:, [0, 2, 1]]

    # landmarks: UV pixel of each ICT landmark vertex, snapped to the nearest mask pixel
    vuv = vertex_uv(ict)
    kp = uv_to_pixel(vuv[ict.landmarks68])
    yy, xx = np.divmod(face_ind, n)
    kpt = np.zeros((68, 2), np.int32)
    for i, (x, y) in enumerate(kp):     # among mask pixels within 3 px, the one nearest the vertex in 3D
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        near = np.flatnonzero(d2 <= max(9.0, d2.min()))
        d3 = np.linalg.norm(canonical[near] - ict.neutral[ict.landmarks68[i]], axis=1)
        j = near[np.argmin(d3)]
        kpt[i] = xx[j], yy[j]

    regions = np.full((n, n), REGION_NECK, np.uint8)
    regions[g.mask] = REGION_FACE
    # neck: below the jaw line (in model space: under the polyline through jaw landmarks 0..16)
    jaw = ict.neutral[ict.landmarks68[:17]]
    order = np.argsort(jaw[:, 0])
    jaw_y = np.interp(canonical[:, 0], jaw[order, 0], jaw[order, 1])
    inner = np.abs(canonical[:, 0]) < 0.97 * np.abs(jaw[:, 0]).max()
    neck = np.where(inner, canonical[:, 1] < jaw_y - 0.3, canonical[:, 1] < jaw[[0, 16], 1].min() - 4.0)
    regions.ravel()[face_ind[neck]] = REGION_NECK
    for sl, lab, margin in ((slice(36, 42), REGION_EYES, 5), (slice(42, 48), REGION_EYES, 5),
                            (slice(27, 36), REGION_NOSE, 4), (slice(48, 60), REGION_MOUTH, 4)):
        m = _hull_mask(kpt[sl], margin) & g.mask
        regions[m] = lab
    for x, y in kpt:
        regions[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2][g.mask[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]] = \
            REGION_LANDMARK
    lay = UVLayout(name=LAYOUT_NAME, mask=g.mask, face_ind=face_ind, triangles=tris, kpt_xy=kpt, regions=regions,
                   canonical=canonical.astype(np.float32),
                   meta={"source": "ICT-FaceKit light (MIT), Face geometry tile-0 UVs",
                         "units": "canonical in cm, x to subject's left, y up, z out of the face",
                         "builder": "prn_blender.synth.uvmap", "version": 1})
    lay.validate()
    return lay


def _one_hot(ict: ICTModel, weights: dict) -> np.ndarray:
    e = np.zeros(len(ict.expression_names), np.float32)
    for k, w in weights.items():
        e[ict.expression_index(k)] = w
    return e


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", help="development data folder (default: $PRN_BLENDER_SHARED or ../shared)")
    ap.add_argument("--out", default=str(LAYOUTS_DIR / f"{LAYOUT_NAME}.npz"))
    a = ap.parse_args(argv)
    lay = build_ict_layout(load_ict(shared=a.shared))
    lay.save(a.out)
    print(f"{a.out}: {lay.n_vertices} vertices, {len(lay.triangles)} triangles")


if __name__ == "__main__":
    main()
