"""ICT-FaceKit face model I/O (MIT licensed, USC ICT).

Model space: centimetres, right-handed, x to the subject's left, y up, z out of the face (the face looks toward +z).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.paths import shared_file

ICT_NPZ = "face-model/ict-facekit/ict_facekit_light.npz"
#: Vertex id ranges of the model's geometries (from the ICT-FaceKit README).
FACE_VERTS = 9409          # Face: [0, 9409)
HEAD_NECK_VERTS = (9409, 11248)


@dataclass(frozen=True, eq=False)
class ICTModel:
    neutral: np.ndarray           # (V,3) float32 cm
    uv: np.ndarray                # (U,2) float32 UDIM
    faces: np.ndarray             # (F,4) int32, -1 padded
    faces_uv: np.ndarray          # (F,4) int32
    identity_modes: np.ndarray    # (100,V,3)
    expression_modes: np.ndarray  # (53,V,3)
    identity_names: tuple
    expression_names: tuple
    landmarks68: np.ndarray       # (68,) vertex ids

    def shape(self, identity: np.ndarray | None = None, expression: np.ndarray | None = None) -> np.ndarray:
        """(V,3) vertices for identity weights (100,) and expression weights (53,) in [0,1]."""
        v = self.neutral.copy()
        if identity is not None:
            v += np.tensordot(identity.astype(np.float32), self.identity_modes, 1)
        if expression is not None:
            v += np.tensordot(expression.astype(np.float32), self.expression_modes, 1)
        return v

    def expression_index(self, name: str) -> int:
        return self.expression_names.index(name)

    def expression_weights(self, named: dict) -> np.ndarray:
        """(53,) float32 expression weights from {ARKit name: weight}, zero elsewhere."""
        e = np.zeros(len(self.expression_names), np.float32)
        for n, w in named.items():
            e[self.expression_index(n)] = w
        return e

    def triangles(self, vmax: int | None = None, vmin: int = 0, reach: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Triangulated faces (vertex ids, uv ids) of the polygons whose vertices all lie in [vmin, vmax); with
        ``reach`` < vmin, also the polygons bridging to [reach, vmin) (a seam to a lower-numbered part)."""
        f, fu = self.faces, self.faces_uv
        vmax = vmax if vmax is not None else len(self.neutral)
        lo = vmin if reach is None else reach
        valid = f >= 0
        inside = np.where(valid, (f >= lo) & (f < vmax), True).all(1) & (valid & (f >= vmin) & (f < vmax)).any(1)
        f, fu = f[inside], fu[inside]
        quad = f[:, 3] >= 0
        t = np.concatenate([f[:, [0, 1, 2]], f[quad][:, [0, 2, 3]]])
        tu = np.concatenate([fu[:, [0, 1, 2]], fu[quad][:, [0, 2, 3]]])
        return t.astype(np.int32), tu.astype(np.int32)


def load_ict(path: str | Path | None = None, shared: str | Path | None = None) -> ICTModel:
    """Load the packed ICT-FaceKit npz (default: ``<shared>/face-model/ict-facekit/ict_facekit_light.npz``)."""
    p = Path(path) if path else shared_file(ICT_NPZ, shared)
    d = np.load(p)
    return ICTModel(neutral=d["neutral_vertices"], uv=d["uv"], faces=d["faces"], faces_uv=d["faces_uv"],
                    identity_modes=d["identity_modes"], expression_modes=d["expression_modes"],
                    identity_names=tuple(map(str, d["identity_names"])),
                    expression_names=tuple(map(str, d["expression_names"])), landmarks68=d["landmarks68"])


def _read_obj(path: Path):
    v, vt, f, ft = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            v.append([float(a) for a in parts[1:4]])
        elif parts[0] == "vt":
            vt.append([float(a) for a in parts[1:3]])
        elif parts[0] == "f":
            ids = [p.split("/") for p in parts[1:]]
            fv = [int(i[0]) - 1 for i in ids] + [-1] * (4 - len(ids))
            fu = [int(i[1]) - 1 if len(i) > 1 and i[1] else -1 for i in ids] + [-1] * (4 - len(ids))
            f.append(fv[:4])
            ft.append(fu[:4])
    return (np.asarray(v, np.float32), np.asarray(vt, np.float32), np.asarray(f, np.int32), np.asarray(ft, np.int32))


def convert_ict_repo(repo: str | Path, out: str | Path) -> Path:
    """Pack an ICT-FaceKit checkout (``FaceXModel/*.obj`` + ``vertex_indices.json``) into the npz layout that
    :func:`load_ict` reads. Modes are stored as offsets from ``generic_neutral_mesh.obj``."""
    repo = Path(repo)
    fx = repo / "FaceXModel"
    neutral, uv, faces, faces_uv = _read_obj(fx / "generic_neutral_mesh.obj")
    vi = json.loads((repo / "vertex_indices.json").read_text())
    ids = sorted(fx.glob("identity*.obj"))
    exp_names = list(vi["expressions"])
    id_modes = np.stack([_read_obj(p)[0] - neutral for p in ids]) if ids else np.zeros((0,) + neutral.shape)
    ex_modes = np.stack([_read_obj(fx / f"{n}.obj")[0] - neutral for n in exp_names])
    lm = np.asarray(vi["idx_to_landmark_verts"], np.int32)
    out = Path(out)
    np.savez_compressed(out, neutral_vertices=neutral, uv=uv, faces=faces, faces_uv=faces_uv,
                        identity_names=np.array([p.stem for p in ids]), identity_modes=id_modes.astype(np.float32),
                        expression_names=np.array(exp_names), expression_modes=ex_modes.astype(np.float32),
                        landmarks68=lm, fitting_verts=np.asarray(vi["idx_to_fitting_verts"], np.int32),
                        rigid_verts=np.asarray(vi["idx_to_rigid_verts"], np.int32))
    return out
