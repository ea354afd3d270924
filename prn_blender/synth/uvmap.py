"""The project's own position-map layout ``ict-face-v2``, built from ICT-FaceKit's tile-0 face UVs.

``rasterize_face_uv`` maps every UV pixel centre to an ICT face triangle and barycentrics. The layout asset keeps
only what inference needs (mask, triangles, landmarks, regions, canonical shape); the data engine recomputes the
(pixel -> triangle, barycentrics) gather from the model, deterministically, and checks it against the asset's mask.

Landmarks (v2): the 68 points follow the 3D iBUG-68 convention of BFM-based data (300W-LP, AFLW2000-3D, PRNet's
``uv_kpt_ind``), not ICT-FaceKit's own ``landmarks68``: those sit up to 1.7 cm off that convention on the jaw line
(v1 used them). ``bfm_convention_kpt`` transfers the 68 landmarks of PRNet's mean BFM face (the shipped
``prnet-bfm`` asset, MIT) onto the ICT surface: fit ICT's identity and expression modes and a similarity to those
landmarks, take the nearest point of the fitted surface to each one, repeat from the new points until they settle.

Eyes: ICT's tile-0 UVs leave each eye opening a slit under one UV pixel tall (lid margins at rows 71.43 and 72.40,
16 columns), so the position map steps by the eye's whole opening (8.5 +- 2.3 crop px on training scenes) between
rows 71 and 73. A conv decoder draws that step as a ramp: the shipped model draws 3.0 px there, its eyes come out
3 px less open than the truth and their opening barely varies. Opening the slits to 7 rows (a UV warp around the
eyes, tried in stop 53, not kept) makes a fine-tune draw the opening's right size (8.4-8.8 px) but not vary it.

Run ``python -m prn_blender.synth.uvmap`` to regenerate ``assets/layouts/ict-face-v2.npz``; then
``python -m prn_blender.synth.prnet_layout`` (its canonical shape is scaled onto these landmarks).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from ..core.constants import (REGION_EYES, REGION_FACE, REGION_LANDMARK, REGION_MOUTH, REGION_NECK, REGION_NOSE,
                              RESOLUTION)
from ..core.layout import UVLayout, grid_triangles, load_layout
from ..core.paths import LAYOUTS_DIR
from ..core.pose import umeyama
from .ict import FACE_VERTS, ICTModel, load_ict

LAYOUT_NAME = "ict-face-v2"
#: layout whose 68 landmarks define the iBUG-68 3D convention that ``bfm_convention_kpt`` transfers
CONVENTION_LAYOUT = "prnet-bfm"


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


def _ict_landmark_pixels(ict: ICTModel, g: UVGather) -> np.ndarray:
    """(68,) face-pixel indices of ICT's own ``landmarks68`` vertices: the UV pixel of each, snapped to the mask pixel
    within 3 px that is nearest the vertex in 3D."""
    face_ind = np.flatnonzero(g.mask)
    canonical = g.apply(ict.neutral)
    kp = uv_to_pixel(vertex_uv(ict)[ict.landmarks68])
    yy, xx = np.divmod(face_ind, RESOLUTION)
    out = np.zeros(68, np.int64)
    for i, (x, y) in enumerate(kp):
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        near = np.flatnonzero(d2 <= max(9.0, d2.min()))
        out[i] = near[np.argmin(np.linalg.norm(canonical[near] - ict.neutral[ict.landmarks68[i]], axis=1))]
    return out


@dataclass(frozen=True, eq=False)
class LandmarkFit:
    """ICT shape and similarity fitted to 68 target landmarks: target ~ scale * R @ model point + t."""
    weights: np.ndarray     # (153,) identity (100) then expression (53) weights
    scale: float
    R: np.ndarray
    t: np.ndarray
    fitted: np.ndarray      # (68,3) the fitted model's landmark points in the target frame


def fit_landmarks(ict: ICTModel, g: UVGather, pixels: np.ndarray, target: np.ndarray, lam_identity: float = 1.0,
                  lam_expression: float = 0.1, iters: int = 6) -> LandmarkFit:
    """Fit ICT identity (ridge ``lam_identity``) and expression weights (ridge ``lam_expression``, clipped to
    [0, 1]) and a similarity so that the face pixels ``pixels`` (68,) (indices into the mask's face pixels) land on
    ``target`` (68,3), any right-handed frame and unit (image pixels with y flipped up, cm, ...)."""
    vids, bary = g.vids[pixels], g.bary[pixels].astype(np.float64)
    modes = np.concatenate([ict.identity_modes[:, vids], ict.expression_modes[:, vids]])     # (K,68,3,3)
    n_id = len(ict.identity_modes)
    reg = np.r_[np.full(n_id, lam_identity), np.full(len(modes) - n_id, lam_expression)]
    base = (ict.neutral[vids] * bary[..., None]).sum(-2)                                     # (68,3)
    basis = (modes * bary[None, ..., None]).sum(-2).reshape(len(modes), -1).T                # (204,K)
    target = np.asarray(target, np.float64)
    points, c = base, np.zeros(len(modes))
    for _ in range(iters):
        s, R, t, _ = umeyama(points, target)
        local = (target - t) @ R / s                       # targets in ICT model space
        c = np.linalg.solve(basis.T @ basis + np.diag(reg), basis.T @ (local - base).ravel())
        c[n_id:] = np.clip(c[n_id:], 0.0, 1.0)
        points = base + (basis @ c).reshape(-1, 3)
    s, R, t, _ = umeyama(points, target)
    return LandmarkFit(weights=c, scale=s, R=R, t=t, fitted=s * points @ R.T + t)


def bfm_convention_kpt(ict: ICTModel, g: UVGather, rounds: int = 6) -> np.ndarray:
    """(68,2) int32 UV pixels (x, y) on the ICT face where the iBUG-68 landmarks of the BFM convention fall.

    Starts from ICT's own landmark pixels; each round fits the ICT shape to the mean BFM face's 68 landmarks with
    the current pixels (``fit_landmarks``), then moves every landmark to the face pixel of the fitted surface
    nearest its BFM target, until no pixel moves.
    """
    ref = load_layout(CONVENTION_LAYOUT)
    target = ref.canonical[ref.kpt_vertex].astype(np.float64)
    idx = _ict_landmark_pixels(ict, g)
    for _ in range(rounds):
        f = fit_landmarks(ict, g, idx, target)
        local = (target - f.t) @ f.R / f.scale
        n_id = len(ict.identity_modes)
        surface = g.apply(ict.shape(f.weights[:n_id], f.weights[n_id:]))                  # (N,3)
        new = np.array([np.argmin(((surface - q) ** 2).sum(1)) for q in local])
        if np.array_equal(new, idx):
            break
        idx = new
    y, x = np.divmod(np.flatnonzero(g.mask)[idx], RESOLUTION)
    return np.stack([x, y], 1).astype(np.int32)


def build_ict_layout(ict: ICTModel) -> UVLayout:
    g = rasterize_face_uv(ict)
    canonical = g.apply(ict.neutral)
    n = RESOLUTION
    face_ind = np.flatnonzero(g.mask)

    # Do not connect grid neighbours across the mouth slit or the eye holes: veto edges that stretch when the
    # jaw opens and the eyes widen.
    opened = ict.shape(expression=ict.expression_weights({"jawOpen": 1.0, "eyeWide_L": 1.0, "eyeWide_R": 1.0}))
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

    kpt = bfm_convention_kpt(ict, g)

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
                         "landmarks": f"iBUG-68 3D convention of {CONVENTION_LAYOUT} (bfm_convention_kpt)",
                         "builder": "prn_blender.synth.uvmap", "version": 2})
    lay.validate()
    return lay


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
