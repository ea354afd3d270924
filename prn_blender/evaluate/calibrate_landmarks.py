"""Calibrate where a model's 68 landmarks are read on its position map, on real faces.

The layout's landmark pixels were fitted to the mean BFM face's landmarks by shape alone
(synth.uvmap.bfm_convention_kpt). On real faces the network's surface meets the iBUG-68 annotation convention a few
pixels away from them (most on the jaw). This measures, on the pseudo set (real faces that are not evaluation
images, labelled by the 3DDFA_V2 peer; ``--pseudo-extra`` adds the registry photos), each landmark's error at every
face pixel within ``--radius`` UV pixels of its layout pixel, and picks the pixel with the lowest mean (each source
weighs the same, as the set's NME does). It cross-validates first: fitted on one part of the sources, measured on the
rest. ``--write`` records the pixels in the weights file (``landmark_uv``; weights.landmark_layout reads them; the
tensors are unchanged). Only the landmark readout changes: the surface, the mesh and the crops from a detector stay.
A linear readout instead of one pixel (the calibrated pixel plus a ridge-weighted sum of its 7x7 neighbours' offsets
from it, per landmark; stop 34, the shipped model's pixels as the start) moved the held-out sources of the same
splits by -0.023 to +0.003 points at ridge 0.1, and by -0.026 to +0.27 at ridges 1e-2 to 1e-4: one pixel each.

Run: ``python -m prn_blender.evaluate.calibrate_landmarks --weights W --pseudo-extra DIR [--radius 3] [--write]``
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from .metrics import source_of

#: (name, sources fitted on) of the cross-validation splits; each is measured on the other sources
SPLITS = (("people", ("people",)), ("photos, webcam, talking", ("photos", "webcam", "talking")),
          ("webcam, talking", ("webcam", "talking")))


def collect(rec, shared=None, extra=None):
    """(names, labels (F,68,3), position maps (F,256,256,3) float32 in image pixels) of the pseudo set's faces
    that ``rec`` (a FaceReconstructor) finds, with its default inference and detector crops, as eval.py measures."""
    from ..core.reconstruct import ReconstructionError
    from .run import pseudo_set
    names, labels, maps = [], [], []
    for name, rgb, lm, _ in pseudo_set(shared, extra):
        try:
            r = rec(rgb, texture=False)[0]
        except ReconstructionError:
            continue
        names.append(name)
        labels.append(lm)
        maps.append(r.position_map.astype(np.float32))
    return names, np.asarray(labels, np.float64), np.asarray(maps, np.float32)


def candidate_errors(maps: np.ndarray, labels: np.ndarray, kpt: np.ndarray, mask: np.ndarray,
                     radius: int) -> np.ndarray:
    """(68, F, 2r+1, 2r+1) error in percent of the face size (NME's "box" normalizer: sqrt(w*h) of the labels' 2D
    box) of reading landmark i at UV pixel kpt[i] + (dx, dy), index [i, f, r+dy, r+dx]; inf off the face."""
    r = radius
    size = np.sqrt(np.prod(np.ptp(labels[:, :, :2], axis=1), axis=1))
    out = np.full((68, len(labels), 2 * r + 1, 2 * r + 1), np.inf)
    for i, (x, y) in enumerate(kpt):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                u, v = x + dx, y + dy
                if 0 <= u < mask.shape[1] and 0 <= v < mask.shape[0] and mask[v, u]:
                    d = maps[:, v, u, :2].astype(np.float64) - labels[:, i, :2]
                    out[i, :, r + dy, r + dx] = np.linalg.norm(d, axis=1) / size * 100
    return out


def source_mean(values: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """The mean over faces (axis 0 of ``values``) with each source weighing the same."""
    return np.mean([values[sources == s].mean(0) for s in dict.fromkeys(sources)], axis=0)


def fit(errors: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(68,2) (dx, dy) offsets with the lowest source-weighted mean error, per landmark (candidate_errors)."""
    r = errors.shape[-1] // 2
    out = np.zeros((68, 2), np.int64)
    for i in range(68):
        dy, dx = np.unravel_index(np.argmin(source_mean(errors[i], sources)), errors.shape[2:])
        out[i] = dx - r, dy - r
    return out


def nme_at(errors: np.ndarray, offsets: np.ndarray, sources: np.ndarray) -> float:
    """The source-weighted NME (%) with the landmarks read at ``offsets``."""
    r = errors.shape[-1] // 2
    per_face = np.mean([errors[i, :, r + dy, r + dx] for i, (dx, dy) in enumerate(offsets)], axis=0)
    return float(source_mean(per_face, sources))


def cross_validate(errors: np.ndarray, sources: np.ndarray) -> list[dict]:
    """For each of SPLITS present: fitted on its sources, the NME of the other sources before and after."""
    none = np.zeros((68, 2), np.int64)
    out = []
    for name, fitted in SPLITS:
        on = np.isin(sources, fitted)
        if on.all() or not on.any():
            continue
        offsets = fit(errors[:, on], sources[on])
        rest = ~on
        out.append({"fitted_on": name, "measured_on": ", ".join(dict.fromkeys(sources[rest])),
                    "before": round(nme_at(errors[:, rest], none, sources[rest]), 4),
                    "after": round(nme_at(errors[:, rest], offsets, sources[rest]), 4)})
    return out


def main(argv=None) -> int:
    from ..core.paths import SharedDataMissing
    from ..core.weights import WeightsError
    try:
        return _main(argv)
    except (WeightsError, SharedDataMissing) as e:
        raise SystemExit(f"error: {e}") from None


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="the model to calibrate (its layout's own pixels are the start)")
    ap.add_argument("--pseudo-extra", help="a folder of photos of other people (tools/fetch_registry_faces.py)")
    ap.add_argument("--radius", type=int, default=3, help="UV pixels around each layout pixel to search (3: "
                                                          "cross-validated best at stop 31, 2-8 tried)")
    ap.add_argument("--shared", help="development data folder (the pseudo set's photos, clips and peer)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true",
                    help="record the pixels in the weights file (atomic; tensors and other metadata unchanged)")
    ap.add_argument("--copy-from", metavar="W",
                    help="instead of fitting: record the pixels the weights file W records (with their calibration "
                         "record), e.g. those of the model a soup or a fine-tune started from")
    a = ap.parse_args(argv)
    if a.radius < 1:
        ap.error("--radius must be at least 1")
    if a.copy_from:
        return copy_pixels(a.copy_from, a.weights, argv)
    from ..core.reconstruct import FaceReconstructor
    t0 = time.time()
    rec = FaceReconstructor(weights=a.weights, device=a.device)
    base = rec.predictor.layout                                   # the network's own pixels, not a calibration's
    names, labels, maps = collect(rec, a.shared, a.pseudo_extra)
    sources = np.array([source_of(n) for n in names])
    if len(dict.fromkeys(sources)) < 2:
        raise SystemExit("the pseudo set gave fewer than 2 sources: nothing to cross-validate on")
    errors = candidate_errors(maps, labels, base.kpt_xy, base.mask, a.radius)
    del maps
    cvs = cross_validate(errors, sources)
    for cv in cvs:
        print(f"fitted on {cv['fitted_on']}: {cv['measured_on']} {cv['before']:.4f} -> {cv['after']:.4f} % NME")
    offsets = fit(errors, sources)
    before, after = nme_at(errors, np.zeros_like(offsets), sources), nme_at(errors, offsets, sources)
    print(f"all {len(names)} faces ({', '.join(dict.fromkeys(sources))}): {before:.4f} -> {after:.4f} % NME "
          f"(in-sample); mean shift {np.linalg.norm(offsets, axis=1).mean():.2f} UV px, "
          f"{int(offsets.any(1).sum())} of 68 landmarks moved ({time.time() - t0:.0f} s)")
    pixels = (base.kpt_xy + offsets).astype(int)
    if not a.write:
        print(json.dumps(pixels.tolist()))
        return 0
    meta = dict(rec.predictor.meta["meta"])                        # the weights as loaded above, not read again
    record_pixels(rec.predictor.model, base, a.weights, meta, pixels.tolist(), {
        "command": _command(argv),
        "faces": len(names), "sources": sorted(set(sources.tolist())), "radius": a.radius,
        "nme_before": round(before, 4), "nme_after_in_sample": round(after, 4),
        "cross_validation": cvs})
    print(f"recorded the 68 landmark pixels in {Path(a.weights)}")
    return 0


def _command(argv) -> str:
    """This tool's command line as run (``argv``, else the process's)."""
    return "python -m prn_blender.evaluate.calibrate_landmarks " + shlex.join(
        [*(sys.argv[1:] if argv is None else argv)])


def record_pixels(model, layout, weights, meta: dict, pixels: list, calibration: dict) -> None:
    """Write ``weights`` back (atomic, in the dtype it was stored in) with ``meta`` plus the 68 landmark ``pixels``
    and their ``calibration`` record; the pixels must lie on ``layout``'s face."""
    from safetensors import safe_open

    from ..core.weights import landmark_layout, save_weights
    meta = {**meta, "landmark_uv": pixels, "landmark_calibration": calibration}
    landmark_layout(meta, layout)                                  # on the face
    with safe_open(weights, "pt") as f:
        dtype = f.get_tensor(next(iter(f.keys()))).dtype           # written back as it was stored
    save_weights(model, weights, layout.name, meta, dtype=dtype)


def copy_pixels(source, weights, argv=None) -> int:
    """Record in ``weights`` the landmark pixels ``source`` records, with its calibration record and the model they
    were fitted for (``copied_from``: ``source``, or the model ``source`` copied them from in turn); the weights'
    tensors and other metadata unchanged, written back in their dtype."""
    from ..core.weights import load_model, read_metadata, sha256
    src = read_metadata(source)["meta"]
    if "landmark_uv" not in src or "landmark_calibration" not in src:
        raise SystemExit(f"error: {source} records no calibrated landmark pixels")
    cal = src["landmark_calibration"]
    model, layout, md = load_model(weights)
    record_pixels(model, layout, weights, md["meta"], src["landmark_uv"], {
        **cal, "command": _command(argv),
        "copied_from": cal.get("copied_from") or {"file": Path(source).name, "sha256": sha256(source),
                                                  "command": cal["command"]}})
    print(f"recorded the 68 landmark pixels of {Path(source)} in {Path(weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
