"""Calibrate a detector's box to PRN's crop convention on synthetic faces (never on evaluation images).

For each rendered face with known 68 landmarks: the (dx, dy, s) that make ``crop_from_box(calibrated box)`` equal
the GT landmark crop (x1.6). Prints the medians; ``core.detect.YUFACE_CALIBRATION`` holds the shipped values.
Run: ``python -m prn_blender.synth.calibrate_detector --n 48 --seed 5``.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from ..core.constants import BOX_CENTER_SHIFT, BOX_CROP_SCALE, KPT_CROP_SCALE


def box_to_gt_relation(box, kpt) -> tuple[float, float, float]:
    x0, y0, x1, y1 = box
    size = (x1 - x0 + y1 - y0) / 2
    lo, hi = kpt[:, :2].min(0), kpt[:, :2].max(0)
    old = (hi - lo).sum() / 2
    c = (lo + hi) / 2
    s = KPT_CROP_SCALE * old / (BOX_CROP_SCALE * size)
    return (c[0] - (x0 + x1) / 2) / size, (c[1] - (y0 + y1) / 2) / size - BOX_CENTER_SHIFT * s, s


def calibrate(detector: str = "yuface", n: int = 48, seed: int = 5, shared=None) -> np.ndarray:
    from ..core.detect import make_detector
    from .ict import load_ict
    from .render import FaceRenderer
    from .sampler import sample_params
    det = make_detector(detector)
    ict = load_ict(shared=shared)
    b = FaceRenderer(ict).render(sample_params(n, ict.expression_names, torch.Generator().manual_seed(seed),
                                               max_yaw=60))
    pad, rel = 128, []
    for i in range(n):
        im = cv2.copyMakeBorder(b.image[i].permute(1, 2, 0).numpy(), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        raw = det.detect_raw(cv2.cvtColor((im * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        if len(raw):
            rel.append(box_to_gt_relation(raw[0][:4] - pad, b.kpt[i].numpy()))
    return np.array(rel)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="yuface")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--shared")
    a = ap.parse_args(argv)
    rel = calibrate(a.detector, a.n, a.seed, a.shared)
    med = np.median(rel, 0)
    print(f"{len(rel)}/{a.n} detected; median dx={med[0]:.3f} dy={med[1]:.3f} s={med[2]:.3f}; "
          f"std {np.round(rel.std(0), 3).tolist()}")


if __name__ == "__main__":
    main()
