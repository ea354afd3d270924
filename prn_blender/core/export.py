"""Writers for FaceResult: Wavefront OBJ (+ MTL + texture PNG), landmarks JSON, overlay PNG."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .image_io import save_image
from .result import FaceResult


def write_obj(result: FaceResult, path: str | Path) -> Path:
    """OBJ in image space (x right, y down, z toward camera, pixels) flipped to a y-up right-handed frame
    (x, -y, z) so that viewers show the face upright; UVs and the texture PNG/MTL next to it."""
    path = Path(path)
    tex = path.with_name(path.stem + "_texture.png")
    mtl = path.with_suffix(".mtl")
    rgba = np.concatenate([result.texture, result.texture_mask[..., None].astype(np.float32)], 2)
    save_image(tex, rgba)
    mtl.write_text(f"newmtl face\nKd 1 1 1\nmap_Kd {tex.name}\n")
    v = np.concatenate([result.vertices.astype(np.float64) * np.array([1, -1, 1]), result.colors], 1)
    n, nt = len(v), len(result.triangles)
    # one %-format per block (3.5x faster than a line at a time)
    path.write_text(f"mtllib {mtl.name}\nusemtl face\n"
                    + ("v %.4f %.4f %.4f %.4f %.4f %.4f\n" * n) % tuple(v.ravel().tolist())
                    + ("vt %.6f %.6f\n" * len(result.uvs)) % tuple(np.asarray(result.uvs, np.float64).ravel().tolist())
                    + ("f %d/%d %d/%d %d/%d\n" * nt) % tuple((result.triangles + 1).repeat(2, 1).ravel().tolist()))
    return path


def write_landmarks_json(result: FaceResult, path: str | Path) -> Path:
    Path(path).write_text(json.dumps(result.landmarks_json(), indent=1))
    return Path(path)


def draw_overlay(image: np.ndarray, results: list[FaceResult], mesh: bool = True) -> np.ndarray:
    """Float RGB image with each face's mesh (sparse wireframe) and 68 landmarks drawn over it."""
    out = (np.clip(image, 0, 1) * 255).astype(np.uint8).copy()
    h, w = out.shape[:2]
    th = max(1, int(round(max(h, w) / 500)))
    for r in results:
        if mesh:
            tri = r.triangles[:: max(1, len(r.triangles) // 4000)]
            pts = r.vertices[:, :2]
            for t in tri:
                p = pts[t].astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(out, [p], True, (90, 170, 255), 1, cv2.LINE_AA)
        for x, y in r.landmarks[:, :2]:
            cv2.circle(out, (int(round(x)), int(round(y))), th + 1, (0, 255, 0), -1, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0


def write_outputs(results: list[FaceResult], image: np.ndarray, out_dir: str | Path, stem: str) -> list[Path]:
    """The CLI's files: <stem>.obj/.mtl/_texture.png, <stem>_landmarks.json, <stem>_overlay.png
    (faces after the first get a _1, _2 ... suffix)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, r in enumerate(results):
        s = stem if i == 0 else f"{stem}_{i}"
        files.append(write_obj(r, out_dir / f"{s}.obj"))
        files.append(write_landmarks_json(r, out_dir / f"{s}_landmarks.json"))
    ov = out_dir / f"{stem}_overlay.png"
    save_image(ov, draw_overlay(image, results))
    files.append(ov)
    return files
