"""Measure a model's inference crop zoom, never on evaluation images: for each zoom, a
model's mean 68-point NME on the pseudo real set (default: real faces that are not evaluation images, labelled by
the 3DDFA_V2 peer, each source weighing the same, as ``eval.py --dataset pseudo`` reports) or on held-out synthetic
faces (``--dataset synthetic``, seed 4242; 777 is the evaluation set), for each way the project crops a face:

* ``landmarks``: the landmark crop of the labels (``crop_from_landmarks``; video tracking's and the re-crop's
  convention), zoomed;
* ``detector``: what a photo gets, the detector's box and a second pass cropped from the first pass's landmarks,
  both zoomed (faces the detector misses are left out of this column);
* ``roi``: the 3DDFA roi box of the labels shrunk by the zoom, for the record: ``FaceReconstructor`` uses a given
  roi box as it is.

Run: ``python -m prn_blender.evaluate.calibrate_zoom [--dataset pseudo|synthetic] [--zooms 1,1.1,1.15]``. The zoom
is the model's: ``ship --zoom Z`` records the chosen one in its weights (``core.weights.inference_zoom``; models that
record none get ``constants.INFERENCE_ZOOM``).
"""
from __future__ import annotations

import argparse

import numpy as np

ZOOMS = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25)
PATHS = ("landmarks", "detector", "roi")


def calibration_faces(dataset: str, n: int = 128, seed: int = 4242, shared=None, extra=None) -> list:
    """(source, RGB float image, (68,3) labels) of the pseudo real set (with the faces of the photos in ``extra``:
    run.extra_faces) or of ``n`` held-out synthetic faces (their source is "synthetic")."""
    from .metrics import source_of
    from .run import pseudo_set, synthetic_set
    if dataset == "pseudo":
        return [(source_of(name), img, lm) for name, img, lm, _ in pseudo_set(shared, extra)]
    if dataset == "synthetic":
        return [("synthetic", img, kpt) for _, img, kpt, _, _ in synthetic_set(n, seed, 90.0, shared)]
    raise ValueError(f"unknown dataset {dataset!r}: pseudo or synthetic")


def calibrate(faces, zooms=ZOOMS, weights=None) -> dict:
    """{zoom: {path: NME %, mean of sources}} over ``faces`` (calibration_faces), paths as in the module doc."""
    from ..core.crop import crop_from_roi
    from ..core.reconstruct import FaceReconstructor, InferenceOptions, ReconstructionError
    from ..core.result import CropTransform
    from .metrics import nme, source_means
    from .run import roi_from_landmarks
    out = {}
    sources = [src for src, _, _ in faces]
    rec = FaceReconstructor(weights=weights, options=InferenceOptions())
    for z in zooms:
        rec.zoom = z                                     # the one model, its crops zoomed by each candidate
        errs = {p: [] for p in PATHS}
        for _, img, lm in faces:
            errs["landmarks"].append(nme(rec(img, texture=False, landmarks=lm)[0].landmarks, lm))
            try:
                errs["detector"].append(nme(rec(img, texture=False)[0].landmarks, lm))
            except ReconstructionError:
                errs["detector"].append(np.nan)
            roi = crop_from_roi(roi_from_landmarks(lm))
            crop = CropTransform(roi.center, roi.size / z, roi.resolution)
            errs["roi"].append(nme(rec(img, texture=False, crop=crop)[0].landmarks, lm))
        out[z] = {p: float(np.mean(list(source_means(e, sources).values()))) for p, e in errs.items()}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("pseudo", "synthetic"), default="pseudo")
    ap.add_argument("--zooms", default=",".join(f"{z:g}" for z in ZOOMS), help="comma-separated zooms")
    ap.add_argument("--n", type=int, default=128, help="synthetic faces")
    ap.add_argument("--seed", type=int, default=4242, help="synthetic seed (777 is the evaluation set)")
    ap.add_argument("--weights")
    ap.add_argument("--shared")
    ap.add_argument("--pseudo-extra", metavar="DIR", help="pseudo: also the faces of the photos in DIR (eval.py's)")
    a = ap.parse_args(argv)
    faces = calibration_faces(a.dataset, a.n, a.seed, a.shared, a.pseudo_extra)
    res = calibrate(faces, [float(z) for z in a.zooms.split(",")], a.weights)
    print(f"{a.dataset}, {len(faces)} faces, NME % (mean of sources) by zoom:")
    print("zoom  " + "  ".join(f"{p:>9s}" for p in PATHS))
    for z, r in res.items():
        print(f"{z:4.2f}  " + "  ".join(f"{r[p]:9.3f}" for p in PATHS))
    for p in PATHS:
        print(f"best for {p}: {min(res, key=lambda z: res[z][p]):.2f}")
    print("record the chosen zoom in the weights with: python -m prn_blender.train.ship ... --zoom Z")


if __name__ == "__main__":
    main()
