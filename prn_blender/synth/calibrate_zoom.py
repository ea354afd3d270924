"""Measure the inference crop zoom (``constants.INFERENCE_ZOOM``) on held-out synthetic faces, never on evaluation
images: for each zoom, the shipped model's mean 68-point NME with crops from the GT landmarks (the tracker's and,
via the detector calibration, the detector's convention) and from 3DDFA-style roi boxes (the evaluation protocol).
Run: ``python -m prn_blender.synth.calibrate_zoom --n 128 --seed 4242`` (seed 777 is the evaluation set).
"""
from __future__ import annotations

import argparse

import numpy as np

ZOOMS = (1.0, 1.05, 1.1, 1.15, 1.2)


def calibrate(n: int = 128, seed: int = 4242, zooms=ZOOMS, weights=None, shared=None) -> dict:
    """{zoom: (NME % landmark crops, NME % roi crops)}."""
    from ..core.reconstruct import FaceReconstructor, InferenceOptions
    from ..evaluate.metrics import nme
    from ..evaluate.run import roi_from_landmarks, synthetic_set
    data = [(img, kpt) for _, img, kpt, _, _ in synthetic_set(n, seed, 90.0, shared)]
    out = {}
    for z in zooms:
        rec = FaceReconstructor(weights=weights, options=InferenceOptions(zoom=z))
        errs = [[nme(rec(img, texture=False, **kw)[0].landmarks, kpt)
                 for kw in ({"landmarks": kpt}, {"roi": roi_from_landmarks(kpt)})] for img, kpt in data]
        out[z] = tuple(np.mean(errs, 0))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--weights")
    ap.add_argument("--shared")
    a = ap.parse_args(argv)
    res = calibrate(a.n, a.seed, weights=a.weights, shared=a.shared)
    for z, (lm, roi) in res.items():
        print(f"zoom {z:.2f}: NME landmark crops {lm:.2f} %, roi crops {roi:.2f} %, mean {(lm + roi) / 2:.2f} %")
    best = min(res, key=lambda z: sum(res[z]))
    print(f"best zoom on {a.n} synthetic faces (seed {a.seed}): {best:.2f}")


if __name__ == "__main__":
    main()
