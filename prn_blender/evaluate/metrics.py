"""Landmark metrics (pure numpy): NME (all points and by landmark group), yaw buckets, CED / AUC, and the
AFLW2000-3D ground-truth loader.

Protocol (3DDFA benchmark, see ``notes/prn.md``): NME = mean over the 68 points of the L2 error divided by the
sqrt(w*h) of the GT 68-point 2D box, in percent; buckets by |yaw| [0,30], (30,60], (60,90].
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

BUCKETS = (("0-30", 0.0, 30.0), ("30-60", 30.0, 60.0), ("60-90", 60.0, np.inf))
N_AFLW2000 = 2000
_trapz = getattr(np, "trapezoid", None) or np.trapz


# iBUG-68 landmark groups: index ranges [start, stop)
GROUPS = {"jaw": (0, 17), "brows": (17, 27), "nose": (27, 36), "eyes": (36, 48), "mouth": (48, 68)}


def _point_errors(pred, gt, norm: str, dims: int) -> np.ndarray:
    """(B,68) L2 error of each point in percent of the normalizer (see nme)."""
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    if g.ndim == 2:
        p, g = p[None], g[None]
    if p.shape[:2] != g.shape[:2]:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if p.shape[-1] < dims or g.shape[-1] < dims:
        raise ValueError(f"dims={dims} needs {dims} coordinates: pred {p.shape}, gt {g.shape}")
    err = np.linalg.norm(p[..., :dims] - g[..., :dims], axis=-1)
    if norm == "box":
        wh = g[..., :2].max(axis=1) - g[..., :2].min(axis=1)
        d = np.sqrt(wh[:, 0] * wh[:, 1])
    elif norm == "iod":
        if g.shape[1] < 46:
            raise ValueError("norm='iod' needs the 68-point layout")
        d = np.linalg.norm(g[:, 36, :dims] - g[:, 45, :dims], axis=-1)
    else:
        raise ValueError(f"unknown norm {norm!r} (use 'box' or 'iod')")
    return err / d[:, None] * 100.0


def nme(pred, gt, norm: str = "box", dims: int = 2):
    """Normalized mean error in percent.

    pred, gt: (68, 2|3) or batched (B, 68, 2|3) landmarks in pixels. The error is the L2 distance over x,y
    (``dims=2``) or x,y,z (``dims=3``), averaged over the points and divided by sqrt(w*h) of the GT 2D landmark
    box (``norm="box"``) or the outer inter-ocular distance ||gt[36] - gt[45]|| (``norm="iod"``, over the same
    ``dims`` coordinates). Returns a float for a single sample, a (B,) array for a batch.
    """
    out = _point_errors(pred, gt, norm, dims).mean(axis=-1)
    return float(out[0]) if np.ndim(gt) == 2 else out


def nme_by_group(pred, gt, norm: str = "box", dims: int = 2) -> dict:
    """NME in percent of each landmark group of ``GROUPS`` (68-point input as for nme): the mean error over the
    group's points, divided by the whole face's normalizer, so the 68-point NME is the point-count-weighted mean
    of the groups. Returns {group: float} for a single sample, {group: (B,) array} for a batch."""
    e = _point_errors(pred, gt, norm, dims)
    if e.shape[1] != 68:
        raise ValueError(f"landmark groups need the 68-point layout, got {e.shape[1]} points")
    out = {k: e[:, a:b].mean(axis=1) for k, (a, b) in GROUPS.items()}
    return {k: float(v[0]) for k, v in out.items()} if np.ndim(gt) == 2 else out


def source_of(name: str) -> str:
    """The source of a pseudo-set image name ("source/item", evaluate.run.pseudo_set)."""
    return name.split("/")[0]


def source_means(values, sources) -> dict:
    """{source: mean of its values} in first-seen order, NaN values (misses) left out; for sets where each source
    (a photo folder, a clip) should weigh the same whatever its number of frames."""
    v, s = np.asarray(values, float), np.asarray(sources)
    ok = np.isfinite(v)
    return {str(k): float(v[ok & (s == k)].mean()) for k in dict.fromkeys(s[ok])}


def yaw_buckets(values, yaws) -> dict:
    """Mean of ``values`` per |yaw| bucket [0,30], (30,60], (60,90] (above 90 counts as 60-90).

    Returns {"0-30", "30-60", "60-90", "mean" (mean of the non-empty bucket means), "all" (mean over all
    samples)}; an empty bucket (or an empty input) gives NaN.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    a = np.abs(np.asarray(yaws, np.float64).reshape(-1))
    if v.shape != a.shape:
        raise ValueError(f"values {v.shape} and yaws {a.shape} differ")
    out = {}
    for name, lo, hi in BUCKETS:
        m = (a <= hi) & ((a > lo) if lo > 0 else np.ones_like(a, bool))
        out[name] = float(v[m].mean()) if m.any() else float("nan")
    means = [out[n] for n, _, _ in BUCKETS if not np.isnan(out[n])]
    out["mean"] = float(np.mean(means)) if means else float("nan")
    out["all"] = float(v.mean()) if v.size else float("nan")
    return out


def ced(values, max_x: float = 10, n: int = 1001):
    """Cumulative error distribution: (x in [0, max_x] with n samples, fraction of values <= x)."""
    v = np.sort(np.asarray(values, np.float64).reshape(-1))
    x = np.linspace(0.0, float(max_x), int(n))
    if v.size == 0:
        return x, np.zeros_like(x)
    return x, np.searchsorted(v, x, side="right") / v.size


def auc(values, max_x: float) -> float:
    """Area under the CED curve on [0, max_x], normalized to [0, 1] (1 = every error is 0)."""
    x, y = ced(values, max_x=max_x, n=10001)
    return float(_trapz(y, x) / max_x) if max_x > 0 else float("nan")


def _index_map(data_dir: Path, names_all: list[str]) -> dict[str, int]:
    """Image stem -> row of the 2000-row arrays: the json map when present, else the sorted name order."""
    js = data_dir / "aflw2000_3ddfa_index_exact.json"
    mapping: dict[str, int] = {}
    if js.exists():
        raw = json.loads(js.read_text())
        idx = raw.get("index", raw) if isinstance(raw, dict) else {}
        mapping = {Path(k).stem: int(v) for k, v in idx.items() if isinstance(v, (int, float, str))
                   and str(v).lstrip("-").isdigit()}
    if len(names_all) == N_AFLW2000:      # the full set: sorted order is the definition of the rows
        for i, s in enumerate(names_all):
            mapping.setdefault(s, i)
    return mapping


def load_aflw2000(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """AFLW2000-3D samples available under ``data_dir`` (the ``aflw2000-3d`` folder, images in ``images/``).

    Each sample: {"name", "image" (Path), "gt" (68,3) float32 pixels, "yaw" (degrees, > 0: the subject turns to
    its left, as core.pose), "roi" (4,) [sx,sy,ex,ey] float or None}. Rows of the 2000-row arrays come from
    ``aflw2000_3ddfa_index_exact.json`` when present, else (all 2000 images present) from the sorted image-name
    order. Images with no known row are skipped.
    """
    if data_dir is None:
        from ..core.paths import shared_file
        data_dir = shared_file("aflw2000-3d")
    d = Path(data_dir)
    img_dir = d / "images" if (d / "images").is_dir() else d
    if not (d / "AFLW2000-3D.pts68.npy").exists():
        from ..core.paths import SharedDataMissing
        raise SharedDataMissing(f"missing {d / 'AFLW2000-3D.pts68.npy'}")
    pts = np.load(d / "AFLW2000-3D.pts68.npy")                     # (2000, 3, 68)
    pose = np.load(d / "AFLW2000-3D.pose.npy") if (d / "AFLW2000-3D.pose.npy").exists() else None
    roi_f = d / "AFLW2000-3D_crop.roi_box.npy"
    rois = np.load(roi_f) if roi_f.exists() else None
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == ".jpg")
    mapping = _index_map(d, [p.stem for p in images])
    out = []
    for p in images:
        r = mapping.get(p.stem)
        if r is None or not 0 <= r < len(pts):
            continue
        # the file's yaw is > 0 when the subject turns to its right: flipped to core.pose's convention
        yaw = -float(np.asarray(pose[r]).reshape(-1)[0]) if pose is not None else 0.0
        out.append({"name": p.stem, "image": p, "index": int(r),
                    "gt": np.ascontiguousarray(pts[r].T, dtype=np.float32),
                    "yaw": yaw,
                    "roi": None if rois is None else np.asarray(rois[r], np.float64)})
    return out
