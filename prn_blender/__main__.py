"""Command line: ``python -m prn_blender {reconstruct,info,blend,eval} ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _photos(paths: list[str]) -> list[Path]:
    """The photos to reconstruct: each path as given, a folder's photos (core.image_io.IMAGE_SUFFIXES, sorted, not
    its sub-folders). ValueError for a folder without photos and for two photos whose outputs would have the same
    names."""
    from .core.image_io import IMAGE_SUFFIXES
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise ValueError(f"{p}: no photos ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out += found
        else:
            out.append(p)
    seen = {}
    for p in out:
        if p.stem in seen:
            raise ValueError(f"{seen[p.stem]} and {p} would both write {p.stem}.*; rename one or run them "
                             "separately")
        seen[p.stem] = p
    return out


def _reconstruct(a) -> int:
    """Every photo of ``a.images`` with one reconstructor: its files in ``a.out`` (core.export.write_outputs).
    A photo that cannot be read or shows no face gets one 'error:' line and no files, and the others go on;
    exit 2 when any failed."""
    from .core.constants import PHOTO_SCALES, PHOTO_TURNS, SURROUND_BLUR, VIDEO_SCALES, VIDEO_TURNS
    from .core.export import write_outputs
    from .core.image_io import ImageError, load_image, upright_turns
    from .core.reconstruct import FaceReconstructor, InferenceOptions, ReconstructionError
    from .core.weights import WeightsError
    scales, turns = (VIDEO_SCALES, VIDEO_TURNS) if a.one_view else (PHOTO_SCALES, PHOTO_TURNS)
    try:
        photos = _photos(a.images)
        if a.box is not None and len(photos) > 1:
            raise ValueError(f"--box gives the face of one photo, not of {len(photos)}")
        rec = FaceReconstructor(weights=a.weights, device=a.device, detector=a.detector,
                                options=InferenceOptions(flip=a.flip, scales=scales, turns=turns, recrop=a.recrop,
                                                         periphery=a.periphery,
                                                         surround_blur=SURROUND_BLUR if a.surround_blur else None,
                                                         refine=a.refine, texture_size=a.texture_size))
    except (ValueError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in photos:
        try:
            img = load_image(path)
            faces = rec(img, box=a.box, turns=upright_turns(path))
        except (ImageError, ReconstructionError) as e:
            failed += 1
            named = len(photos) == 1 or isinstance(e, ImageError)            # ImageError names the file
            print(f"error: {e}" if named else f"error: {path}: {e}", file=sys.stderr)
            continue
        for f in write_outputs(faces, img, a.out, path.stem):
            print(f)
    if len(photos) > 1:
        print(f"{len(photos) - failed} of {len(photos)} photos reconstructed", file=sys.stderr)
    return 2 if failed else 0


def _texture_size(text: str) -> int:
    n = int(text)
    if not 16 <= n <= 8192:
        raise argparse.ArgumentTypeError(f"{n}: give a side of 16 to 8192 texels")
    return n


def _info(a) -> int:
    from .core.network import count_parameters
    from .core.reconstruct import PRNPredictor
    from .core.weights import WeightsError, inference_zoom
    try:
        p = PRNPredictor(a.weights, a.device)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"parameters: {count_parameters(p.model):,}")
    print(f"width: {p.model.width}")
    print(f"layout: {p.layout.name} ({p.layout.n_vertices} vertices, {len(p.layout.triangles)} triangles)")
    print(f"device: {p.device}")
    zoom = inference_zoom(p.meta["meta"])
    print(f"inference zoom: {zoom:g} ({'recorded in the weights' if 'inference_zoom' in p.meta['meta'] else 'default'})")
    for k, v in sorted(p.meta.get("meta", {}).items()):
        print(f"{k}: {v}")
    return 0


def _blend(a) -> int:
    from .blender.pipeline import run_blend
    return run_blend(a.input, a.out, frames=a.frames, rig=a.rig, smoothing=a.smoothing, weights=a.weights,
                     wide_view=a.wide_view, face=a.face)


def _import_prnet(a) -> int:
    from .core.tf_bundle import BundleError, import_prnet_checkpoint
    try:
        print(import_prnet_checkpoint(a.checkpoint, a.out))
    except (BundleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m prn_blender")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reconstruct", help="photos -> OBJ + landmarks JSON + overlay PNG each")
    r.add_argument("images", nargs="+", metavar="IMAGE",
                   help="photos, or folders of photos; each gets <name>.obj/.mtl/_texture.png, <name>_landmarks.json "
                        "and <name>_overlay.png in --out (faces after the first <name>_1 ...)")
    r.add_argument("--weights", help="weights file (default: the shipped model)")
    r.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="face box, pixels (one photo only)")
    r.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    r.add_argument("--detector", default="auto", help="auto | yuface | haar | yunet:PATH.onnx")
    r.add_argument("--no-flip", dest="flip", action="store_false",
                   help="skip the mirrored second pass (half the network time, a little less accurate)")
    r.add_argument("--one-view", action="store_true",
                   help="skip multi-view averaging, the crop turned either way (a third of the network time, less "
                        "accurate)")
    r.add_argument("--no-periphery", dest="periphery", action="store_false",
                   help="skip the wider view that gives the forehead, ears and neck (a fifth less network time by "
                        "default, same landmarks, a worse forehead and neck)")
    r.add_argument("--no-recrop", dest="recrop", action="store_false",
                   help="use the detector's crop as it is, without the second pass cropped from the first pass's "
                        "landmarks (about half the network time by default, less accurate)")
    r.add_argument("--no-surround-blur", dest="surround_blur", action="store_false",
                   help="the second pass without its views run once more with the surround blurred (about a third "
                        "less network time by default, less accurate)")
    r.add_argument("--refine", action="store_true",
                   help="redraw the mouth from a close-up patch with the shipped refiner (core.refine), so smiles and "
                        "puckers show (off by default: REFINER_CARD.md)")
    r.add_argument("--texture-size", type=_texture_size, metavar="N",
                   help="side of the UV texture in texels (default: 256, or up to 2048 as fine as the photo: "
                        "core.reconstruct.texture_side)")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(fn=_reconstruct)
    i = sub.add_parser("info", help="print parameter count, layout and device of a weights file")
    i.add_argument("--weights")
    i.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    i.set_defaults(fn=_info)
    b = sub.add_parser("blend", help="image or video -> .blend (headless add-on pipeline)")
    b.add_argument("input")
    b.add_argument("--out", required=True, help="output .blend path")
    b.add_argument("--frames", help="START:END:STEP for videos")
    b.add_argument("--rig", action="store_true", help="also generate the face rig")
    b.add_argument("--smoothing", help="'off' or MIN_CUTOFF,BETA for the One Euro filter")
    b.add_argument("--no-wide-view", dest="wide_view", action="store_false",
                   help="videos: skip the wider (un-zoomed) view that key frames run for the forehead, ears and "
                        "neck (every constants.VIDEO_WIDE_EVERY frames, carried between: about a quarter of the time "
                        "per frame)")
    b.add_argument("--face", type=int, default=1,
                   help="photos and videos showing several faces: which to build, 1 = the largest (default), 2 = the "
                        "next ...")
    b.add_argument("--weights")
    b.set_defaults(fn=_blend)
    t = sub.add_parser("import-prnet", help="convert PRNet's official TF checkpoint (no TensorFlow needed)")
    t.add_argument("checkpoint", help="checkpoint prefix or .index file (…/256_256_resfcn256_weight)")
    t.add_argument("--out", required=True, help="output .safetensors (layout prnet-bfm)")
    t.set_defaults(fn=_import_prnet)
    return ap


def main(argv=None) -> int:
    from .cli_util import script_argv
    a = build_parser().parse_args(script_argv() if argv is None else argv)
    return a.fn(a)


if __name__ == "__main__":
    if not __package__:         # run as a file: blender -b -P prn_blender/__main__.py -- ARGS
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from prn_blender.__main__ import main as _main
        from prn_blender.cli_util import exit_now
    else:
        from .cli_util import exit_now
        _main = main
    exit_now(_main())
