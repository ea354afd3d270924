"""Reconstruct the default portrait (or IMAGE) with the shipped model: OUT/<name>.blend + OUT/<name>.png."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="prn_blender_user_"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("image", nargs="?", help="a photo (default: scikit-image's public-domain astronaut portrait)")
    ap.add_argument("--out", default=str(REPO / "out"))
    a = ap.parse_args()
    from prn_blender.core.export import draw_overlay
    from prn_blender.core.image_io import ImageError, load_image, save_image
    from prn_blender.core.reconstruct import FaceReconstructor, ReconstructionError
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.image:
        src, name = Path(a.image), Path(a.image).stem
    else:
        from skimage import data
        name = "astronaut"
        src = out / "inputs" / "astronaut.png"
        src.parent.mkdir(exist_ok=True)
        save_image(src, data.astronaut() / 255.0)
    try:
        faces = FaceReconstructor()(str(src))
    except (ImageError, ReconstructionError) as e:       # unreadable file, no face: one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2
    png = out / f"{name}.png"
    save_image(png, draw_overlay(load_image(src), faces))
    from prn_blender.blender.pipeline import run_blend
    blend = out / f"{name}.blend"
    code = run_blend(str(src), str(blend))
    if code == 0:
        print(f"face: yaw {faces[0].pose.yaw:.1f} pitch {faces[0].pose.pitch:.1f} roll {faces[0].pose.roll:.1f}, "
              f"confidence {faces[0].confidence:.2f}")
        print(f"wrote {blend}")
        print(f"wrote {png}")
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
