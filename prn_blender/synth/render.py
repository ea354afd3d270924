"""Batched synthetic face renderer on torch tensors (CPU or CUDA).

A sample = identity + expression + pose + camera + lighting + appearance + background. The ICT model surface is
drawn as a dense point cloud (fixed area-weighted samples on its triangles) splatted with a z-buffer
(``scatter_reduce``), then small holes are filled. The ground-truth position map is a fixed gather of the posed
vertices over the layout's (pixel -> triangle, barycentrics).

Frames: model space (cm, y up, z out of the face) -> crop space (256x256 pixels, x right, y down, z = depth toward
the camera scaled like x,y and shifted so the face's minimum z is 0), exactly as PRN's position maps.
The crop is the "GT landmark box x 1.6" convention (constants.KPT_CROP_SCALE), centred on the 68-point box.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.constants import KPT_CROP_SCALE, RESOLUTION
from ..core.layout import UVLayout, load_layout
from . import accessories
from .ict import FACE_VERTS, HEAD_NECK_VERTS, ICTModel
from .uvmap import LAYOUT_NAME, rasterize_face_uv, uv_to_pixel, vertex_uv

# 2: head layer warped, then composited; seam polygons drawn; exposure-like colour. 3: hair volume, fringes, locks
# and glasses (accessories.py). 4: ground-truth landmarks and the crop box follow the layout's iBUG-68 3D convention
# (ict-face-v2) instead of ICT's own landmark vertices. 5: cavity (ambient occlusion) shading, lash lines, darker
# brows, random sclera; photo-like backgrounds and black crop borders (sampler). 6: the black border falls on all
# four sides (5 never blacked the left side and blacked the right one twice as often). 7: training scenes add
# environment (spherical-harmonic) lighting (sampler.sample_lighting), face-metered exposure (sampler.expose) and
# saturation / sharpening / random convolution (restyle, removed in 11); the held-out synthetic benchmark keeps the
# scenes of 6. 8: training scenes are yaw-aware (accessories.draw): glasses also beyond 50 deg yaw, the near lens
# only. 9: and no hair lock over the face from the jaw end turned away beyond 35 deg. 10: a quarter of the training
# scenes have another person's head behind the subject, cut by the crop border (sampler.distract). 11: no restyle:
# in two fine-tunes of the shipped model that differed only in it (same seed), it cost 0.42 points of real-photo
# NME (6.15 vs 5.73 %; nose +0.44, mouth +0.59) and nothing on held-out synthetic faces (4.23 both). 12: eyes with
# an iris and a pupil: 11 drew ICT's outer eyeball shell (the cornea, whose UVs centre on the gaze axis) all sclera,
# hiding the inner shell that carried the iris colour, so open eyes showed no iris. 13: closed eyes show lid skin: 12
# drew the lash lines as a band in UV pixels about the lid landmarks, which a blink stretches over the whole lid (a
# dark smear), and sampled the lids at their open-eye area, so the eyeball showed through them shut; lash lines now
# follow the lids' front edges (LASH_CM) and points are sampled at the larger of the open and closed areas
GENERATOR_VERSION = "ictsynth-13"

# the head is drawn on a canvas this many pixels larger than the crop on every side, so the paper's shrink /
# shift / rotation augmentation (see sampler.augment) reveals more head and neck, not a cut edge
CANVAS_MARGIN = 48

# the body under the head in scenes with sampler.sample_body's parameters (train.py --body P), canonical cm (y up, z
# to the camera): skin-and-neck vertices below NECK_TOP turn towards the torso's orientation, fully at NECK_BASE;
# the torso (an elliptic cylinder BODY_WALL cm tall under sloping shoulders) hangs from BODY_PIVOT, the base of the
# ICT neck; it is drawn from BODY_POINTS (wall, shoulders) point samples at half the canvas resolution
NECK_TOP, NECK_BASE = -9.0, -18.5
BODY_PIVOT = (0.0, -18.5, -1.0)
BODY_WALL = 28.0
BODY_POINTS = (32768, 8192)

# cast shadows of the key light (sampler.sample_shadows, train.py --shadows P): the shadow map's side in cells
SHADOW_GRID = 320
# each point's shadow is then averaged twice over this many nearest points of its part (neutral face)
SHADOW_NEIGHBOURS = 16

# the iris and the pupil on ICT's outer eyeball shell: its points within these distances of its UV square's centre
# (the gaze axis; 0.13 is about 28 deg off it, the cornea's bulge: an iris 1.3 cm across)
IRIS_UV, PUPIL_UV = 0.13, 0.045

# the expression that closes both eyes (on ICT's generic face the upper lids cover the eyeballs at eyeBlink 1.0), and
# the width (cm) of the dark band drawn along each upper lid's front edge (lashes and lash line; see __init__)
CLOSED_EYES = {"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}
LASH_CM = 0.4
# point density (x the face's) of the face triangles within LID_CM of an eye's margins
LID_DENSITY, LID_CM = 3.0, 1.2

# part ids of the rendered point cloud (P_IRIS: ICT's inner eyeball shell, hidden inside the outer one)
P_FACE, P_HEAD, P_MOUTH, P_GUMS, P_TEETH, P_SCLERA, P_IRIS = range(7)
_PART_RANGES = [  # (part, vmin, vmax, relative sampling density); head and mouth also take their seam to the face
    (P_FACE, 0, FACE_VERTS, 1.0), (P_HEAD, *HEAD_NECK_VERTS, 0.6), (P_MOUTH, 11248, 13294, 0.5),
    (P_GUMS, 14062, 17039, 0.5), (P_TEETH, 17039, 21451, 0.6),
    (P_SCLERA, 21451, 22221, 1.0), (P_IRIS, 22221, 23021, 1.0), (P_SCLERA, 23021, 23791, 1.0),
    (P_IRIS, 23791, 24591, 1.0),
]


@dataclass
class Batch:
    """One rendered batch. image (B,3,256,256) float RGB in [0,1], the head composited over ``background``;
    layer (B,4,C,C) the head alone, premultiplied RGB + coverage alpha, on a canvas of C = 256 + 2 CANVAS_MARGIN
    pixels centred on the crop; background (B,3,256,256); pos (B,3,256,256) crop pixels (zero off the face);
    kpt (B,68,3) crop pixels; visibility (B,256,256) bool (face pixels seen by the camera);
    pose (B,3) yaw, pitch, roll in degrees (yaw > 0: the subject turns to its left)."""
    image: torch.Tensor
    layer: torch.Tensor
    background: torch.Tensor
    pos: torch.Tensor
    kpt: torch.Tensor
    visibility: torch.Tensor
    pose: torch.Tensor


def _rotation(yaw, pitch, roll):
    """(B,3,3) R = Rz(roll) @ Rx(pitch) @ Ry(yaw), angles in radians, model frame (y up, z to camera)."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    Ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).view(-1, 3, 3)
    Rx = torch.stack([o, z, z, z, cp, -sp, z, sp, cp], -1).view(-1, 3, 3)
    Rz = torch.stack([cr, -sr, z, sr, cr, z, z, z, o], -1).view(-1, 3, 3)
    return Rz @ Rx @ Ry


def _sh_basis(n: torch.Tensor) -> torch.Tensor:
    """(...,8) the environment light's basis at camera-space unit normals n (...,3) (see sampler.sample_lighting):
    the non-constant real spherical harmonics up to order 2, less their value at the normal (0, 0, 1)."""
    x, y, z = n.unbind(-1)
    return torch.stack([x, y, z - 1, x * y, y * z, x * z, x * x - y * y, 3 * z * z - 3], -1)


class FaceRenderer:
    """Holds the model and precomputed samplings on one device; ``render(params)`` draws a batch."""

    def __init__(self, ict: ICTModel, layout: UVLayout | None = None, device="cpu", density: float = 90.0,
                 seed: int = 0):
        self.device = torch.device(device)
        layout = layout or load_layout(LAYOUT_NAME)
        g = rasterize_face_uv(ict)
        if not np.array_equal(g.mask, layout.mask):
            raise ValueError("ICT model rasterization does not match the layout asset; rebuild the layout")
        self.layout = layout
        dev = self.device
        self.neutral = torch.from_numpy(ict.neutral).to(dev)
        self.id_modes = torch.from_numpy(ict.identity_modes.reshape(len(ict.identity_modes), -1)).to(dev)
        self.ex_modes = torch.from_numpy(ict.expression_modes.reshape(len(ict.expression_modes), -1)).to(dev)
        self.face_ind = torch.from_numpy(layout.face_ind).to(dev)
        self.kpt_vertex = torch.from_numpy(layout.kpt_vertex).to(dev)
        # the layout's 68 landmarks as (vertex ids, barycentrics): they frame the crop
        self.lm_vids = torch.from_numpy(g.vids[layout.kpt_vertex].astype(np.int64)).to(dev)
        self.lm_bary = torch.from_numpy(g.bary[layout.kpt_vertex].astype(np.float32)).to(dev)
        rng = np.random.default_rng(seed)

        # render triangles and area-weighted point samples
        tris, tuvs, parts, dens = [], [], [], []
        vuv = vertex_uv(ict)
        for part, a, b, rel in _PART_RANGES:
            t, tu = ict.triangles(b, a, reach=0 if part in (P_HEAD, P_MOUTH) else None)
            tris.append(t)
            tuvs.append(tu)
            parts.append(np.full(len(t), part))
            dens.append(np.full(len(t), rel))
        tris = np.concatenate(tris)
        tuvs = np.concatenate(tuvs)
        parts = np.concatenate(parts)
        dens = np.concatenate(dens)
        v = ict.neutral
        # sampling density from the larger of each triangle's areas with the eyes open and closed: the upper lids
        # stretch several-fold in a blink, and sampled at their open-eye area the eyeball showed through them
        closed = ict.shape(expression=ict.expression_weights(CLOSED_EYES))
        area = np.maximum(_areas(v, tris), _areas(closed, tris))
        # and LID_DENSITY times as dense about the eyes: the eyeball lies within a pixel's depth under a closed lid,
        # so where no lid point lands the hole filling cannot tell it from a gap and it speckles the lid
        margins = eye_margins(ict)
        centre = v[tris].mean(1)
        lid = (parts == P_FACE) & (np.min([_polyline_distance(centre, v[np.concatenate([u, lo[::-1]])])
                                           for u, lo in margins], 0) < LID_CM)
        dens = np.where(lid, dens * LID_DENSITY, dens)
        n_per = rng.poisson(area * density * dens) + (rng.random(len(area)) < 0.5)
        tri_id = np.repeat(np.arange(len(tris)), n_per)
        r1, r2 = rng.random(len(tri_id)), rng.random(len(tri_id))
        s1 = np.sqrt(r1)
        bary = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], 1).astype(np.float32)
        self.render_tris = torch.from_numpy(np.ascontiguousarray(tris, dtype=np.int64)).to(dev)
        s_tri = tris[tri_id]
        self.s_tri = torch.from_numpy(tri_id.astype(np.int64)).to(dev)
        self.s_part = torch.from_numpy(parts[tri_id]).to(dev)
        self.n_points = M = len(tri_id)
        V = len(ict.neutral)
        # sparse (M,V) interpolation matrix: points = S @ vertices
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant)")
        rows = np.repeat(np.arange(M), 3)
        self.S = torch.sparse_coo_tensor(np.stack([rows, s_tri.ravel()]), bary.ravel(), (M, V)).coalesce() \
            .to_sparse_csr().to(dev)
        N = len(g.vids)
        rows = np.repeat(np.arange(N), 3)
        self.G = torch.sparse_coo_tensor(np.stack([rows, g.vids.ravel()]), g.bary.ravel(), (N, V)).coalesce() \
            .to_sparse_csr().to(dev)
        canon = (v[s_tri] * bary[..., None]).sum(1)          # (M,3) cm, neutral face
        self._canon = canon                                   # for the shadows' surface mean (_surface_mean)
        self._near = None
        # face-region masks from UV pixel positions of the face samples
        suv = np.full((M, 2), -100.0, np.float32)
        fm = parts[tri_id] == P_FACE
        suv[fm] = (uv_to_pixel(vuv[s_tri[fm]]) * bary[fm][..., None]).sum(1)
        kp = layout.kpt_xy.astype(np.float32)
        lips = _inside(suv, kp[48:60]) & fm
        brows = [np.concatenate([kp[a:b] + [0, -3], kp[a:b][::-1] + [0, 4]]) for a, b in ((17, 22), (22, 27))]
        brow = (_inside(suv, brows[0]) | _inside(suv, brows[1])) & fm
        beard_poly = np.concatenate([kp[2:15] + [0, 2], kp[[35, 34, 33, 32, 31]] + [0, 2]])
        beard = _inside(suv, beard_poly) & fm & ~lips
        # lash lines along the lids' front edges. ICT's lid margins (the rims of the face's eye holes) are their back
        # edges, against the eyeball; a blink slides the upper lid's front down over the lower margin while its back
        # edge stays up. So the upper lash line is the upper lid's points within LASH_CM of the lower margin with the
        # eyes closed, which is its lowest, front edge open or shut; the lower one, the lower lid's points within
        # LASH_CM / 3 of its margin
        # LASH_CM, even shut, keeps within the lid triangles about the eyes: only their face points are measured
        near = np.flatnonzero(fm & lid[tri_id])
        at, shut = canon[near], (closed[s_tri[near]] * bary[near, :, None]).sum(1)
        band = np.zeros(len(near), bool)
        for upper, lower in margins:
            to_lower = _polyline_distance(at, v[lower])
            upper_lid = _polyline_distance(at, v[upper]) < to_lower
            band |= upper_lid & (_polyline_distance(shut, closed[lower]) < LASH_CM) \
                | ~upper_lid & (to_lower < LASH_CM / 3)
        lash = np.zeros(M, bool)
        lash[near] = band
        lash &= ~brow
        skinpart = parts[tri_id] <= P_HEAD
        # iris and pupil: discs about the gaze axis of the outer eyeball shell (IRIS_UV)
        shell = parts[tri_id] == P_SCLERA
        gaze = np.full(M, np.inf, np.float32)
        gaze[shell] = np.linalg.norm((ict.uv[tuvs[tri_id[shell]]] * bary[shell][..., None]).sum(1) - 0.5, axis=1)
        # low-frequency 3D noise of the canonical position (random Fourier features)
        K = 8
        freqs = rng.normal(size=(K, 3)) * np.repeat([0.08, 0.15, 0.3, 0.6], K // 4)[:, None]
        noise = np.sin(canon @ freqs.T + rng.random(K) * 2 * np.pi).astype(np.float32)      # (M,K)
        # hair masks for a few hairline heights (canonical y, cm), and the back of the head
        self.hairlines = (7.0, 9.0, 11.0, 13.0, 99.0)
        jitter = 0.6 * noise[:, 0]
        hair = [(canon[:, 1] + jitter > h) & skinpart for h in self.hairlines]
        back = (canon[:, 2] < 1.0) & (canon[:, 1] > 0) & skinpart
        hair = [(h | back) if hl < 50 else h for h, hl in zip(hair, self.hairlines)]
        # albedo basis: albedo[b, m, c] = sum_j basis[m, j] * coef[b, j, c]; see albedo()
        cols = {"skin": skinpart & ~lips & ~brow & ~beard & ~lash, "lips": lips, "brow": brow, "beard": beard,
                "lash": lash,
                "mouth": parts[tri_id] == P_MOUTH, "gums": parts[tri_id] == P_GUMS,
                "teeth": parts[tri_id] == P_TEETH, "sclera": shell & (gaze >= IRIS_UV),
                "iris": (gaze < IRIS_UV) & (gaze >= PUPIL_UV) | (parts[tri_id] == P_IRIS), "pupil": gaze < PUPIL_UV}
        basis = [cols[k].astype(np.float32) for k in cols]
        self.basis_names = list(cols)
        for k in range(K):
            basis.append(noise[:, k] * skinpart)
        self.n_noise = K
        # fine detail for scenes with sample_detail's parameters, each a sum of random sinusoids of the canonical
        # position (cm) with unit standard deviation: hair strands (streaks that run down the head: 40-140 cycles
        # around its vertical axis, slowly waving along y) and skin mottling (isotropic, wavelengths of 1-3 cm)
        azim = np.arctan2(canon[:, 0], canon[:, 2])[:, None]
        cycles = rng.uniform(40, 140, 12).round()
        streak = np.sin(cycles * azim + np.sin(canon[:, 1:2] * rng.uniform(0.2, 0.6, 12)) * 2
                        + rng.random(12) * 2 * np.pi).sum(1)
        fs = rng.normal(size=(12, 3)) * 2.5
        mottle = np.sin(canon @ fs.T + rng.random(12) * 2 * np.pi).sum(1)
        self.detail = torch.from_numpy(np.stack([streak / streak.std(), mottle / mottle.std() * skinpart], 1)
                                       .astype(np.float32)).to(dev)                           # (M,2)
        self.hair_masks = torch.from_numpy(np.stack(hair, 1).astype(np.float32)).to(dev)       # (M,H)
        self.basis = torch.from_numpy(np.stack(basis, 1)).to(dev)                             # (M,J)
        inner = (parts[tri_id] >= P_MOUTH) & (parts[tri_id] <= P_TEETH)                     # mouth inside: darker
        self.inner_gain = torch.from_numpy(np.where(inner, 0.55, 1.0).astype(np.float32)[:, None]).to(dev)
        # cavity term of the neutral head, per point (eye sockets, lid margins, nostrils, lip line, ear folds)
        ao = cavity(v, tris)
        self.cavity = torch.from_numpy((ao[s_tri] * bary).sum(1, keepdims=True).astype(np.float32)).to(dev)
        # the neck's turn towards the torso (see _twist_neck): face and head-and-neck vertices below NECK_TOP,
        # smoothstep weights
        y = v[:HEAD_NECK_VERTS[1], 1]
        w = np.clip((NECK_TOP - y) / (NECK_TOP - NECK_BASE), 0, 1)
        self.neck_ids = torch.from_numpy(np.nonzero(w > 0)[0]).to(dev)
        w = w[w > 0]
        self.neck_w = torch.from_numpy((w * w * (3 - 2 * w)).astype(np.float32)).to(dev)
        # the torso's unit samples (see _body): wall (angle, depth below the rim), shoulders (angle, area fraction
        # of the ring between the neck and the rim), and a cloth pattern of each: stripes plus a few sinusoids
        nw, nt = BODY_POINTS
        phi = rng.random(nw + nt) * 2 * np.pi
        u = rng.random(nw + nt)
        fq = rng.normal(size=(4, 3)) * [3.0, 6.0, 3.0]
        q = np.stack([np.cos(phi), np.sin(phi), u], 1)
        tex = np.sin(q @ fq.T + rng.random(4) * 2 * np.pi).sum(1) + 1.5 * np.sin(u * rng.uniform(20, 60))
        self.body_unit = torch.from_numpy(np.stack([phi, u, tex / tex.std()], 1).astype(np.float32)).to(dev)

    # ------------------------------------------------------------------ geometry
    def shapes(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(B,V,3) model-space vertices (cm)."""
        B = identity.shape[0]
        d = identity @ self.id_modes + expression @ self.ex_modes
        return self.neutral[None] + d.view(B, -1, 3)

    def project(self, verts, yaw, pitch, roll, persp_dist):
        """Model space -> crop pixels (B,V,3), crop = KPT box x 1.6 centred at 128. persp_dist: camera distance
        in cm (inf = weak perspective)."""
        R = _rotation(yaw, pitch, roll)
        X = verts @ R.transpose(1, 2)
        X = X - (X[:, self.lm_vids] * self.lm_bary[..., None]).sum(-2).mean(1, keepdim=True)
        d = torch.where(torch.isfinite(persp_dist), persp_dist, torch.full_like(persp_dist, 1e6))[:, None]
        f = d / (d - X[..., 2]).clamp_min(1.0)
        img = torch.stack([X[..., 0] * f, -X[..., 1] * f, X[..., 2]], -1)
        lm = (img[:, self.lm_vids, :2] * self.lm_bary[..., None]).sum(-2)                 # (B,68,2)
        lo, hi = lm.min(1).values, lm.max(1).values
        size = (hi - lo).sum(-1) / 2 * KPT_CROP_SCALE
        s = RESOLUTION / size
        center = (lo + hi) / 2
        out = torch.empty_like(img)
        out[..., :2] = (img[..., :2] - center[:, None]) * s[:, None, None] + RESOLUTION / 2
        out[..., 2] = img[..., 2] * s[:, None]
        return out, R

    # ------------------------------------------------------------------ body (sampler.sample_body)
    def _body_turn(self, p, R):
        """(B,3,3) Q = R^T R_body, the torso's orientation in the head's model frame, and R_body: the torso turns
        by the shares ``body_yaw``, ``body_pitch``, ``body_roll`` of the head's angles (1: as the head)."""
        Rb = _rotation(p["yaw"] * p["body_yaw"], p["pitch"] * p["body_pitch"], p["roll"] * p["body_roll"])
        return R.transpose(1, 2) @ Rb, Rb

    def _twist_neck(self, verts, Q):
        """(B,V,3) model-space vertices with the neck turned about BODY_PIVOT by the share neck_w of rotation Q
        (B,3,3): 0 at NECK_TOP (the head's own orientation), all of it from NECK_BASE down."""
        cos = ((Q.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
        k = torch.stack([Q[:, 2, 1] - Q[:, 1, 2], Q[:, 0, 2] - Q[:, 2, 0], Q[:, 1, 0] - Q[:, 0, 1]], -1)
        k = F.normalize(k, dim=-1)[:, None]                                                  # (B,1,3) axis
        theta = torch.acos(cos)[:, None, None] * self.neck_w[None, :, None]                 # (B,K,1)
        piv = verts.new_tensor(BODY_PIVOT)
        x = verts.index_select(1, self.neck_ids) - piv
        kx = (k * x).sum(-1, keepdim=True)
        x = x * theta.cos() + torch.cross(k.expand_as(x), x, dim=-1) * theta.sin() + k * kx * (1 - theta.cos())
        return verts.index_copy(1, self.neck_ids, x + piv)

    def _body(self, p, Q, Rb):
        """The torso's points in the head's model frame (B,N,3) cm, their normals in camera space (B,N,3) and
        their albedo (B,N,3): cloth of colour ``cloth`` with pattern contrast ``cloth_tex``, skin (``skin``) from
        the neck out to the share ``collar`` of the shoulders."""
        nw = BODY_POINTS[0]
        phi, u, tex = self.body_unit.unbind(-1)
        a, c, zc = p["body_width"][:, None], p["body_depth"][:, None], p["body_z"][:, None]
        drop, top = p["shoulder_drop"][:, None], NECK_BASE - p["neck_extra"][:, None]
        r0 = (6.0 / a).clamp(max=0.6)                                                       # the neck's radius
        cp, sp = phi.cos()[None], phi.sin()[None]
        r = torch.cat([torch.ones_like(a).expand(-1, nw), (r0 ** 2 + u[nw:] * (1 - r0 ** 2)).sqrt()], 1)
        s = ((r - r0) / (1 - r0)).clamp(0, 1)
        wall = torch.arange(len(phi), device=a.device) < nw
        y = torch.where(wall, top - drop - u * BODY_WALL, top - drop * s ** 1.5)
        pts = torch.stack([a * r * cp, y, zc + c * r * sp], -1)
        slope = drop * 1.5 * s.sqrt() / (1 - r0)                                            # -dy/dr, shoulders
        n = torch.where(wall[None, :, None], torch.stack([c * cp, torch.zeros_like(y), a * sp], -1),
                        torch.stack([slope * cp / a, torch.ones_like(y), slope * sp / c], -1))
        piv = pts.new_tensor(BODY_PIVOT)
        pts = (pts - piv) @ Q.transpose(1, 2) + piv
        n = F.normalize(n, dim=-1) @ Rb.transpose(1, 2)
        skin = (~wall[None] & (s < p["collar"][:, None]))[..., None]
        cloth = p["cloth"][:, None] * (1 + p["cloth_tex"][:, None, None] * tex[None, :, None])
        return pts, n, torch.where(skin, p["skin"][:, None], cloth).clamp(0, 1)

    def _shade_points(self, n, albedo, p):
        """Diffuse colour (B,N,3) of points with camera-space normals n (B,N,3): the head's lights without its
        specular and cavity terms."""
        L = F.normalize(p["light_dir"], dim=-1)
        lam = (n @ L[..., None]).clamp_min(0)
        amb = p["ambient"][:, None]
        if "sh" in p:
            amb = amb * (1 + _sh_basis(n) @ p["sh"]).clamp_min(0)
        return albedo * (amb + lam * p["light_col"][:, None])

    # ------------------------------------------------------------------ rendering
    def _interp(self, mat, verts):
        """(B,V,3) -> (B,R,3) through a sparse (R,V) interpolation matrix."""
        B, V, _ = verts.shape
        out = mat @ verts.permute(1, 0, 2).reshape(V, B * 3)
        return out.view(-1, B, 3).permute(1, 0, 2)

    def render(self, p: dict, chunk: int = 4) -> Batch:
        """Draw the batch of scene parameters ``p`` (see sampler.sample_params), ``chunk`` samples at a time on
        the CPU: the canvas-sized buffers of a few samples stay in cache (x1.4 over one batch of 16, bench_core)."""
        B = p["identity"].shape[0]
        verts = self.shapes(p["identity"], p["expression"])     # one pass over the modes for the whole batch
        if self.device.type == "cpu" and B > chunk:
            parts = [self._render({k: v[i:i + chunk] for k, v in p.items()}, verts[i:i + chunk])
                     for i in range(0, B, chunk)]
            return Batch(**{f: torch.cat([getattr(b, f) for b in parts]) for f in Batch.__dataclass_fields__})
        return self._render(p, verts)

    def _render(self, p: dict, verts: torch.Tensor) -> Batch:
        """Draw the scenes ``p`` whose model-space vertices (B,V,3) are ``verts``."""
        dev = self.device
        B = p["identity"].shape[0]
        body = None
        if "body" in p:                                                                       # see sample_body
            Q, Rb = self._body_turn(p, _rotation(p["yaw"], p["pitch"], p["roll"]))
            verts = self._twist_neck(verts, Q)
            body = self._body(p, Q, Rb)
        img_v, R = self.project(verts if body is None else torch.cat([verts, body[0]], 1), p["yaw"], p["pitch"],
                                p["roll"], p["persp_dist"])
        if body is not None:                                  # the torso's points follow the head's vertices
            img_v, body_img = img_v[:, :verts.shape[1]], img_v[:, verts.shape[1]:]
        # position map (face pixels), z shifted to min 0
        face = self._interp(self.G, img_v)                                                    # (B,N,3)
        zf = face[..., 2].clone()
        face[..., 2] -= face[..., 2].min(1, keepdim=True).values
        pos = torch.zeros(B, RESOLUTION * RESOLUTION, 3, device=dev)
        pos.index_copy_(1, self.face_ind, face)
        kpt = face[:, self.kpt_vertex]

        # flat triangle normals in camera space (x right, y up, z to camera); what depends on the normal alone
        # (diffuse and specular terms, environment light, facing) is evaluated per triangle, then gathered per point
        t = self.render_tris
        v0, v1, v2 = verts.index_select(1, t.view(-1)).view(B, -1, 3, 3).unbind(2)
        fn = F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1) @ R.transpose(1, 2), dim=-1)   # (B,T,3)
        sp = self._interp(self.S, img_v)                                                      # (B,M,3)
        albedo = self.albedo(p)                                                               # (B,M,3)
        L = F.normalize(p["light_dir"], dim=-1)
        h = F.normalize(L + torch.tensor([0.0, 0.0, 1.0], device=dev), dim=-1)
        terms = [(fn @ L[..., None]).clamp_min(0),
                 (fn @ h[..., None]).clamp_min(0) ** p["shininess"][:, None, None] * p["specular"][:, None, None],
                 fn[..., 2:]]
        if "sh" in p:                                                                         # see sample_lighting
            terms.append(p["ambient"][:, None] * (1 + _sh_basis(fn) @ p["sh"]).clamp_min(0))
        per = torch.cat(terms, -1).index_select(1, self.s_tri)                                # (B,M,3|6)
        lam, spec = per[..., 0:1], per[..., 1:2]
        if "shadow" in p:                                                                     # see sample_shadows
            lit = self._lit(sp, L, lam, p)
            lam, spec = lam * lit, spec * lit
        amb = per[..., 3:] if "sh" in p else p["ambient"][:, None]                           # (B,M|1,3)
        occ = 1 - p["occlusion"][:, None, None] * self.cavity                                 # (B,M,1)
        col = albedo * occ * (amb + lam * p["light_col"][:, None] * (0.5 + 0.5 * occ)) \
            + spec * occ * p["light_col"][:, None]
        col = col * self.inner_gain                                                           # mouth inside
        # back-facing points never win the z-test (their surface's front side is in front of them)
        front = per[..., 2] > -0.05

        m, n = CANVAS_MARGIN, RESOLUTION
        shift = sp.new_tensor([m, m, 0.0])
        layer, zbuf = self._splat(sp + shift, col, front, B)           # canvas (B,3,C,C), (B,C,C)
        # visibility of the face pixels
        C = n + 2 * m
        x = face[..., 0].round().long().clamp(0, n - 1) + m
        y = face[..., 1].round().long().clamp(0, n - 1) + m
        zb = zbuf.view(B, -1).gather(1, y * C + x)
        vis = torch.zeros(B, n * n, dtype=torch.bool, device=dev)
        vis[:, self.face_ind] = zf >= zb - 1.5
        alpha = torch.isfinite(zbuf)[:, None].to(layer.dtype)
        layer = torch.cat([layer.clamp(0, 1) * alpha, alpha], 1)
        layer = accessories.draw(layer, kpt[..., :2] + m, p)
        if body is not None:                                  # the torso behind the head, hair and glasses
            keep = (body[1][..., 2] > -0.05) & p["body"][:, None]
            half, zb = self._splat((body_img + shift) * 0.5, self._shade_points(body[1], body[2], p), keep, B,
                                   n=C // 2)
            under = torch.cat([half.clamp(0, 1), torch.ones_like(half[:, :1])], 1) * torch.isfinite(zb)[:, None]
            under = F.interpolate(under, size=(C, C), mode="bilinear", align_corners=False)
            layer = layer + (1 - layer[:, 3:]) * under
        crop = layer[:, :, m:m + n, m:m + n]
        out = crop[:, :3] + (1 - crop[:, 3:]) * p["background"]
        pose = torch.stack([p["yaw"], p["pitch"], p["roll"]], -1) * (180 / math.pi)
        return Batch(image=out.clamp(0, 1).contiguous(), layer=layer, background=p["background"],
                     pos=pos.view(B, RESOLUTION, RESOLUTION, 3).permute(0, 3, 1, 2).contiguous(),
                     kpt=kpt, visibility=vis.view(B, RESOLUTION, RESOLUTION), pose=pose)

    def _lit(self, sp, L, lam, p):
        """(B,M,1) share of the key light reaching each point (cast shadows; samples without ``shadow`` are lit): a
        shadow map of all the points (``sp`` (B,M,3) crop pixels, y down, z to the camera) seen along the light
        ``L`` (B,3) (camera space, y up), on a grid of ``shadow_cell`` pixels. A point is lit where it is no deeper
        than the nearest point of a cell less a bias that grows with the light's grazing angle (``lam`` (B,M,1):
        the cosine to the point's normal), averaged over the 3x3 cells around its own, then twice over its
        SHADOW_NEIGHBOURS nearest points on the surface: soft edges, no speckle where the light grazes. The torso
        of sample_body neither casts nor receives them; hair and glasses (accessories.draw) do not cast them."""
        B, n = sp.shape[0], SHADOW_GRID
        Li = L * L.new_tensor([1.0, -1.0, 1.0])                                  # the crop's frame: y down
        a = torch.where(Li[:, :1].abs() < 0.9, Li.new_tensor([1.0, 0, 0]), Li.new_tensor([0, 1.0, 0]))
        u = F.normalize(torch.cross(Li, a, dim=-1), dim=-1)
        q = sp @ torch.stack([u, torch.cross(Li, u, dim=-1), Li], -1)           # (B,M,3) light-space points
        cell = p["shadow_cell"][:, None]
        gx = ((q[..., 0] - q[..., 0].amin(1, keepdim=True)) / cell).long().clamp(max=n - 3) + 1
        gy = ((q[..., 1] - q[..., 1].amin(1, keepdim=True)) / cell).long().clamp(max=n - 3) + 1
        at = torch.arange(B, device=sp.device)[:, None] * n * n + gy * n + gx                # (B,M) map cells
        depth = q[..., 2]
        top = torch.full((B * n * n,), -math.inf, device=sp.device)             # nearest depth to the light per cell
        top.scatter_reduce_(0, at.view(-1), depth.reshape(-1), reduce="amax")
        tan = (1 - lam[..., 0] ** 2).clamp_min(0).sqrt() / lam[..., 0].clamp_min(0.3)
        bias = 1.0 + 3.0 * cell * tan                                           # pixels toward the light
        lit = torch.zeros_like(depth)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                lit += depth >= top.index_select(0, (at + dy * n + dx).view(-1)).view(B, -1) - bias
        lit = lit / 9
        near = self._surface_mean()
        lit = (near @ (near @ lit.T)).T
        return torch.where(p["shadow"][:, None], lit, torch.ones_like(lit))[..., None]

    def _surface_mean(self) -> torch.Tensor:
        """Sparse (M,M): the mean over each point's SHADOW_NEIGHBOURS nearest points of the same part on the
        neutral face (itself included); made once, when the first shadows are drawn."""
        if self._near is None:
            from scipy.spatial import cKDTree
            canon, parts = self._canon, self.s_part.cpu().numpy()
            near = np.zeros((len(canon), SHADOW_NEIGHBOURS), np.int64)
            for part in np.unique(parts):
                at = np.flatnonzero(parts == part)
                k = min(SHADOW_NEIGHBOURS, len(at))
                nn = cKDTree(canon[at]).query(canon[at], k)[1].reshape(len(at), k)
                near[at] = at[nn[:, np.arange(SHADOW_NEIGHBOURS) % k]]
            M = len(canon)
            rows = np.repeat(np.arange(M), SHADOW_NEIGHBOURS)
            self._near = torch.sparse_coo_tensor(np.stack([rows, near.ravel()]),
                                                 np.full(rows.size, 1 / SHADOW_NEIGHBOURS, np.float32), (M, M)) \
                .coalesce().to_sparse_csr().to(self.device)
        return self._near

    def _splat(self, pts, col, keep, B, n=RESOLUTION + 2 * CANVAS_MARGIN):
        """z-buffer splat of (B,M,3) canvas-pixel points with colours (B,M,3), each on its 2x2 nearest pixels;
        only the points with ``keep`` (B,M) are drawn. Returns image (B,3,n,n) and zbuf (B,n,n) (-inf where
        empty); the canvas is n = RESOLUTION + 2 CANVAS_MARGIN pixels wide unless told."""
        trash = B * n * n                       # out-of-image points go to this extra slot
        sel = keep.reshape(-1).nonzero()[:, 0]  # culled points never change a pixel: drop them up front
        pts, col = pts.reshape(-1, 3).index_select(0, sel), col.reshape(-1, 3).index_select(0, sel)
        x0 = pts[:, 0].floor().long()           # pixel centres at integers: the 2x2 pixels around the point
        y0 = pts[:, 1].floor().long()
        # the four taps of every point, tap by tap: (0,0), (1,0), (0,1), (1,1); (4,P) flat canvas indices
        inx = torch.stack([(x0 >= 0) & (x0 < n), (x0 >= -1) & (x0 < n - 1)])
        iny = torch.stack([(y0 >= 0) & (y0 < n), (y0 >= -1) & (y0 < n - 1)])
        tap = torch.tensor([0, 1, n, n + 1], device=pts.device)[:, None]
        at = (sel // keep.shape[1] * (n * n) + y0 * n + x0)[None] + tap
        idx = torch.where(inx[[0, 1, 0, 1]] & iny[[0, 0, 1, 1]], at, trash).view(-1)
        z = pts[:, 2].repeat(4)
        zbuf = torch.full((trash + 1,), -math.inf, device=pts.device)
        zbuf.scatter_reduce_(0, idx, z, reduce="amax")
        # taps within 0.35 px of depth of the nearest one are averaged; only those are summed (in tap order),
        # channel-major: (rgb, weight) rows of the whole canvas batch
        won = (z >= zbuf.index_select(0, idx) - 0.35).nonzero()[:, 0]
        colw = torch.cat([col, torch.ones_like(col[:, :1])], -1).T                 # (4,P) rgb, weight
        hit = idx.index_select(0, won)
        acc = torch.zeros(4, trash + 1, device=pts.device)
        acc.scatter_add_(1, hit[None].expand(4, -1), colw.index_select(1, won % colw.shape[1]))
        acc, zb = acc[:, :trash].view(4, B, n, n).transpose(0, 1), zbuf[:trash].view(B, 1, n, n)
        img = acc[:, :3] / acc[:, 3:].clamp_min(1)
        # holes are filled within the drawn pixels' bounding box (all samples) and a margin the fill cannot
        # cross: beyond it the canvas is empty and stays so
        drawn = torch.isfinite(zb)
        rows, cols = drawn.any(3).any(0).view(-1).nonzero()[:, 0], drawn.any(2).any(0).view(-1).nonzero()[:, 0]
        if len(rows):
            r0, r1 = max(int(rows[0]) - 6, 0), min(int(rows[-1]) + 7, n)
            c0, c1 = max(int(cols[0]) - 6, 0), min(int(cols[-1]) + 7, n)
            _fill_holes_(img[..., r0:r1, c0:c1], zb[..., r0:r1, c0:c1])
        return img, zb[:, 0]

    def albedo(self, p) -> torch.Tensor:
        """(B,M,3) per-point albedo: a linear combination of fixed per-point bases (skin, lips, brows, stubble,
        lash lines, mouth, teeth, sclera, iris, pupil, 3D noise) plus the hair mask for the sample's hairline; with
        sampler.sample_detail's parameters, strand streaks on the hair and mottling on the skin (and beard)."""
        skin = p["skin"]
        coef = torch.stack([
            skin, skin * p["lip_tint"],
            skin * (1 - p["brow_strength"][:, None]) + p["brow_col"] * p["brow_strength"][:, None],
            skin * (1 - p["beard"][:, None]) + p["hair"] * p["beard"][:, None],
            skin * (1 - p["lash"][:, None]) + p["brow_col"] * 0.5 * p["lash"][:, None],
            p["mouth_col"], p["mouth_col"] * 1.3, p["teeth"], p["sclera"], p["iris"] * 0.6,
            p["iris"] * 0.1,
        ], 1)                                                                          # (B,11,3)
        noise = p["noise_w"][:, :self.n_noise, None] * 0.05 * skin[:, None]          # (B,K,3)
        coef = torch.cat([coef, noise], 1)
        out = torch.einsum("mj,bjc->bmc", self.basis, coef)
        hm = self.hair_masks[:, p["hair_idx"]].T[..., None]                          # (B,M,1)
        hair = p["hair"][:, None]
        if "hair_tex" in p:                                                          # see sampler.sample_detail
            streak, mottle = self.detail[None, :, 0:1], self.detail[None, :, 1:2]    # (1,M,1)
            hair = hair * (1 + p["hair_tex"][:, None, None] * streak)
            out = out * (1 + p["skin_tex"][:, None, None] * mottle)
        return torch.where(hm > 0, hair, out).clamp(0, 1)


def _fill_holes_(img: torch.Tensor, zb: torch.Tensor) -> None:
    """Fill, in place, the holes of a splatted (B,3,H,W) image with its (B,1,H,W) depth (-inf where empty): empty
    pixels, and pixels where a far surface leaks through a gap of a nearer one (much deeper than the nearest
    surface around them). Each of three passes fills them with the mean colour and depth of their valid 3x3
    neighbours (3 or more). Reaches 3 pixels beyond the drawn ones.

    The holes are few: each pass counts valid neighbours densely (one channel) and sums colour and depth only at
    the pixels it fills, in the order of a separable 3x3 box sum (rows, then columns)."""
    H, W = img.shape[2:]
    ninf = F.pad(zb, (2, 2, 2, 2), value=-math.inf)
    rowmax = torch.maximum(torch.maximum(ninf[:, :, 0:H], ninf[:, :, 1:H + 1]), ninf[:, :, 2:H + 2])
    rowmax = torch.maximum(torch.maximum(rowmax, ninf[:, :, 3:H + 3]), ninf[:, :, 4:H + 4])
    near = torch.maximum(torch.maximum(rowmax[..., 0:W], rowmax[..., 1:W + 1]), rowmax[..., 2:W + 2])
    near = torch.maximum(torch.maximum(near, rowmax[..., 3:W + 3]), rowmax[..., 4:W + 4])  # nearest within 2 px
    valid = torch.isfinite(zb) & (zb > near - 6.0)
    # zero-padded working planes: colour x valid, valid, depth where valid (B,5,H+2,W+2)
    v = valid.to(img.dtype)
    work = F.pad(torch.cat([img * v, v, torch.where(valid, zb, torch.zeros_like(zb))], 1), (1, 1, 1, 1))
    Hp, Wp = H + 2, W + 2
    flat = work.view(-1)
    chan = torch.tensor([0, 1, 2, 4], device=img.device)[:, None] * (Hp * Wp)    # rgb, depth planes
    d = torch.arange(-1, 2, device=img.device)
    taps = (d[:, None] * Wp + d[None, :])[..., None, None]                           # [dy][dx] offsets
    for _ in range(3):
        w = work[:, 3:4]
        rows = torch.add(w[:, :, :H], w[:, :, 1:H + 1])
        rows += w[:, :, 2:H + 2]
        cnt = torch.add(rows[..., :W], rows[..., 1:W + 1])
        cnt += rows[..., 2:W + 2]
        at = ((~valid) & (cnt >= 3)).view(-1).nonzero()[:, 0]
        if len(at) == 0:                 # nothing changes, in this pass or the next
            break
        b, y, x = at // (H * W), at // W % H, at % W
        centre = (b * (5 * Hp) + y + 1) * Wp + x + 1                                   # padded, plane 0
        pc = centre[None] + chan                                                        # (4,N)
        t = flat.index_select(0, (pc + taps).view(-1)).view(3, 3, *pc.shape)           # (3,3,4,N)
        col = torch.add(t[0], t[1]).add_(t[2])                                          # (3,4,N) per dx
        mean = torch.add(col[0], col[1]).add_(col[2]) / cnt.view(-1)[at].clamp_min(1)   # (4,N)
        img[b, :, y, x] = mean[:3].T
        zb[b, 0, y, x] = mean[3]
        flat[pc] = mean
        flat[centre + 3 * Hp * Wp] = 1.0
        valid[b, 0, y, x] = True


def cavity(verts: np.ndarray, tris: np.ndarray, radius: float = 1.5) -> np.ndarray:
    """(V,) ambient-occlusion-like cavity in [0, 1] of a mesh (cm): for each vertex, the area-weighted mean
    elevation (cosine to its normal) of the surface within ``radius`` above its tangent plane, normalised by the
    99th percentile. Flat or convex surroundings give 0; sockets, folds and narrow gaps approach 1."""
    from scipy.spatial import cKDTree
    v = verts.astype(np.float64)
    fn = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])       # 2 x area x normal
    vn = np.zeros_like(v)
    area = np.zeros(len(v))
    third = np.linalg.norm(fn, axis=1) / 6                                                # a third of each area
    for k in range(3):
        np.add.at(vn, tris[:, k], fn)
        np.add.at(area, tris[:, k], third)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    used = np.unique(tris)
    pairs = used[cKDTree(v[used]).query_pairs(radius, output_type="ndarray")]          # (P,2) vertex ids, i < j
    i, j = pairs[:, 0], pairs[:, 1]
    d = v[j] - v[i]
    dist = np.linalg.norm(d, axis=1)
    d /= np.maximum(dist, 1e-9)[:, None]
    w = 1 - dist / radius                                                               # linear fall-off
    num, den = np.zeros(len(v)), np.zeros(len(v))
    for a, b, sign in ((i, j, 1.0), (j, i, -1.0)):
        up = np.clip(sign * np.einsum("pk,pk->p", vn[a], d), 0, None)
        num += np.bincount(a, area[b] * w * up, minlength=len(v))
        den += np.bincount(a, area[b] * w, minlength=len(v))
    occ = num / np.maximum(den, 1e-12)
    return np.clip(occ / max(np.percentile(occ[used], 99), 1e-9), 0, 1)


def _areas(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """(T,) triangle areas of vertices ``v`` (V,3)."""
    return 0.5 * np.linalg.norm(np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]), axis=1)


def eye_margins(ict: ICTModel) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per eye, the lid margins as ordered vertex ids (upper lid, lower lid), each running from corner to corner:
    the two arcs of the boundary loop around an eye hole of ICT's Face geometry, split at the loop's extreme x
    vertices (the eye corners); the upper arc is the one higher on the neutral face. The Face geometry's boundary
    has four loops: the outline, the mouth and the two eyes, which are the loops nearest iBUG landmarks 36-47."""
    t = ict.triangles(FACE_VERTS)[0]                      # a quad's diagonal is in two triangles: never a boundary
    e, n = np.unique(np.sort(t[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1), axis=0, return_counts=True)
    nbr: dict[int, list[int]] = {}
    for a, b in e[n == 1]:                                # boundary edges: used by one polygon
        nbr.setdefault(int(a), []).append(int(b))
        nbr.setdefault(int(b), []).append(int(a))
    v, eye_lm = ict.neutral, ict.neutral[ict.landmarks68[36:48]]
    out, seen = [], set()
    for start in nbr:
        if start in seen:
            continue
        loop = [start]
        while True:                                       # walk the loop
            nxt = [w for w in nbr[loop[-1]] if w not in loop[-2:]]
            if not nxt or nxt[0] == start:
                break
            loop.append(nxt[0])
        seen.update(loop)
        loop = np.asarray(loop)
        if np.linalg.norm(eye_lm - v[loop].mean(0), axis=1).min() > 1.5:      # not an eye hole
            continue
        i, j = sorted((int(np.argmin(v[loop, 0])), int(np.argmax(v[loop, 0]))))
        arcs = loop[i:j + 1], np.concatenate([loop[j:], loop[:i + 1]])[::-1]
        up = int(v[arcs[1], 1].mean() > v[arcs[0], 1].mean())
        out.append((arcs[up], arcs[1 - up]))
    if len(out) != 2:
        raise ValueError(f"expected two eye holes in the ICT face geometry, found {len(out)}")
    return out


def _polyline_distance(pts: np.ndarray, line: np.ndarray) -> np.ndarray:
    """(N,) distance of (N,D) points to the open polyline (K,D)."""
    out = np.full(len(pts), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((pts - a) @ ab) / max(float(ab @ ab), 1e-12), 0, 1)
        out = np.minimum(out, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
    return out


def _inside(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    from matplotlib.path import Path
    return Path(poly.astype(np.float64)).contains_points(pts.astype(np.float64))
