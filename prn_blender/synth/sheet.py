"""Contact sheet of training samples exactly as the trainer sees them (``train.data.SyntheticStream``: render ->
exposure -> augment over the background -> border, occlusion, degradation [-> blurred surround] [-> JPEG coding]),
with the ground-truth 68 landmarks drawn: ``python -m prn_blender.synth.sheet --out sheet.png [--n 32 --seed 0
--context-blur P --detail --photo-backgrounds P --jpeg P --body P
--shadows P]``."""
from __future__ import annotations

import argparse

import cv2
import numpy as np


def contact_sheet(n: int = 32, seed: int = 0, cols: int = 8, shared=None, context_blur: float = 0.0,
                  detail: bool = False, photo_backgrounds: float = 0.0, jpeg: float = 0.0,
                  body: float = 0.0, shadows: float = 0.0) -> np.ndarray:
    from ..core.layout import load_layout
    from ..train.data import SyntheticStream
    stream = SyntheticStream(n, seed=seed, shared=shared, context_blur=context_blur, detail=detail,
                             photo_backgrounds=photo_backgrounds, jpeg=jpeg, body=body, shadows=shadows)
    img, pos = next(stream)
    lay = load_layout()
    tiles = []
    for i in range(n):
        t = (img[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8).copy()
        for x, y, _ in lay.landmarks(pos[i].permute(1, 2, 0).numpy()):
            cv2.circle(t, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1, cv2.LINE_AA)
        tiles.append(t)
    rows = [np.concatenate(tiles[r * cols:(r + 1) * cols], 1) for r in range(n // cols)]
    return np.concatenate(rows, 0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shared")
    ap.add_argument("--context-blur", type=float, default=0.0, metavar="P",
                    help="as train.py --context-blur: blur the surround of this share of the samples")
    ap.add_argument("--detail", action="store_true", help="as train.py --detail")
    ap.add_argument("--photo-backgrounds", type=float, default=0.0, metavar="P", help="as train.py --photo-backgrounds")
    ap.add_argument("--jpeg", type=float, default=0.0, metavar="P", help="as train.py --jpeg")
    ap.add_argument("--body", type=float, default=0.0, metavar="P", help="as train.py --body")
    ap.add_argument("--shadows", type=float, default=0.0, metavar="P", help="as train.py --shadows")
    a = ap.parse_args(argv)
    from ..core.image_io import save_image
    from ..core.paths import SharedDataMissing
    try:
        sheet = contact_sheet(a.n, a.seed, shared=a.shared, context_blur=a.context_blur, detail=a.detail,
                              photo_backgrounds=a.photo_backgrounds, jpeg=a.jpeg, body=a.body, shadows=a.shadows)
    except (SharedDataMissing, ValueError) as e:          # ValueError: a share outside [0, 1]
        raise SystemExit(f"error: {e}") from None
    save_image(a.out, sheet / 255.0)
    print(a.out)


if __name__ == "__main__":
    main()
