"""Train the eye and mouth refiner (core.refine) on synthetic scenes:
``python -m prn_blender.train.refine --out runs/r1 [--max-time 3600] ...``.

Each step renders (or re-serves, ``--reuse``) a batch of scenes of the main model's training recipe (train.data,
with detail, photo backgrounds and the blurred surround), frames each region's patch from the scene's true 68
landmarks, jitters the frames as a first pass misplaces them (core.refine.jitter_frames) and regresses the patch
coordinates of every UV pixel in each region's window. Loss: mean absolute error in patch pixels over the window's
face pixels, the region's landmark pixels weighted LANDMARK_WEIGHT. Adam with a cosine learning rate. Writes
OUT/refiner.safetensors (every ``--save-every`` steps and at the end) and OUT/log.jsonl.

``python -m prn_blender.train.refine --out runs/r1 --ship`` ships a run's refiner instead: copies it to the add-on's
weights (core.refine.DEFAULT_REFINER, which inference then runs by default) and writes its card, REFINER_CARD.md
(provenance, sha256, the command, the training curve and the expression response measured with and without it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from ..core.layout import load_layout
from ..core.paths import WEIGHTS_DIR
from ..core.refine import (
    DEFAULT_REFINER,
    PATCH,
    REGION_NAMES,
    REGIONS,
    RefineNet,
    Refiner,
    jitter_frames,
    patch_frames,
    region_windows,
    sample_patches,
    save_refiner,
    to_patch,
)
from .data import SyntheticStream, generator_name

LANDMARK_WEIGHT = 4.0
LOG_EVERY = 10       # steps per log.jsonl record
CARD = WEIGHTS_DIR / "REFINER_CARD.md"
CURVE = WEIGHTS_DIR / "refiner_curve.png"


def targets(pos: torch.Tensor, frames: torch.Tensor, windows) -> list[torch.Tensor]:
    """Per region (B,2,h,w) patch coordinates of its window's UV pixels, from (B,3,256,256) position maps."""
    return [to_patch(pos[:, :2, w.v0:w.v1, w.u0:w.u1], frames[:, r]) for r, w in enumerate(windows)]


def pixel_weights(layout, windows, regions) -> list[torch.Tensor]:
    """Per region (h,w) loss weights: 1 on face pixels, LANDMARK_WEIGHT on the region's landmark pixels."""
    out = []
    for w, name in zip(windows, regions):
        m = torch.from_numpy(layout.mask[w.slices].astype("float32"))
        xy = layout.kpt_xy[list(REGIONS[name][0])]
        m[xy[:, 1] - w.v0, xy[:, 0] - w.u0] = LANDMARK_WEIGHT
        out.append(m / m.mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prn_blender.train.refine", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--max-time", type=float, default=0, help="stop after this many seconds (0: --steps)")
    ap.add_argument("--batch", type=int, default=16, help="scenes per step (3 patches each)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--reuse", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--init", help="start from this refiner's weights (its width and regions)")
    ap.add_argument("--ship", action="store_true", help="ship OUT's refiner and write its card instead of training")
    ap.add_argument("--faces", type=int, default=8, help="--ship: synthetic faces for the expression response")
    ap.add_argument("--regions", nargs="+", choices=list(REGIONS),
                    help="--ship: only these regions' heads (the others' windows keep the main network's surface)")
    ap.add_argument("--card-note", nargs="+", default=[], metavar="LINE",
                    help="--ship: lines for the card's notes (why these regions, measurements made elsewhere)")
    ap.add_argument("--shared")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ship:
        return ship(Path(a.out), a.faces, a.shared, a.regions, a.card_note)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    layout = load_layout()
    regions = tuple(REGIONS)
    windows = region_windows(layout, regions)
    recipe = {"detail": True, "photo_backgrounds": 0.8, "context_blur": 0.5}
    stream = SyntheticStream(a.batch, seed=a.seed, reuse=a.reuse, shared=a.shared, **recipe)
    kpt = torch.from_numpy(layout.kpt_xy).long()
    weights = pixel_weights(layout, windows, regions)
    model = RefineNet([w.shape for w in windows], a.width)
    if a.init:
        init = Refiner(a.init, layout)
        if init.regions != list(regions) or init.windows != windows or init.model.width != a.width:
            raise SystemExit(f"--init {a.init}: regions, windows or width differ from this run's")
        model.load_state_dict(init.model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(a.seed + 1)
    t0 = time.time()
    meta = {"generator": generator_name(**recipe), "seed": a.seed, "batch": a.batch, "width": a.width, "lr": a.lr,
            "argv": shlex.join(sys.argv[1:] if argv is None else argv),
            "hardware": f"{platform.machine()}, {torch.get_num_threads()} CPU threads", "patch": PATCH}

    def save(step):
        save_refiner(model, out / "refiner.safetensors", regions, windows, layout.name,
                     dict(meta, steps=step, images_seen=step * a.batch, wall_time_s=round(time.time() - t0, 1)))

    step = 0
    while step < a.steps and not (a.max_time and time.time() - t0 > a.max_time):
        img, pos = next(stream)
        lms = pos[:, :2, kpt[:, 1], kpt[:, 0]].transpose(1, 2)
        frames = jitter_frames(patch_frames(lms, regions), g)
        x = sample_patches(img, frames)
        tg = targets(pos, frames, windows)
        if step == 0 and not a.init:                   # heads start at the mean window
            with torch.no_grad():
                for hd, t in zip(model.heads, tg):
                    hd.bias.copy_(t.mean(0).reshape(-1))
        frac = step / a.steps if not a.max_time else (time.time() - t0) / a.max_time
        for grp in opt.param_groups:
            grp["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        pred = model(x)
        loss = sum((wt * (p - t).abs().sum(1)).mean() for p, t, wt in zip(pred, tg, weights)) * PATCH / len(pred)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        last = step >= a.steps or (a.max_time and time.time() - t0 > a.max_time)
        if step % LOG_EVERY == 0 or last:
            with open(out / "log.jsonl", "a") as log:
                log.write(json.dumps({"step": step, "loss": round(loss.item(), 4), "samples": step * a.batch,
                                      "elapsed": round(time.time() - t0, 1), "lr": opt.param_groups[0]["lr"]}) + "\n")
        if step % a.save_every == 0:
            save(step)
    save(step)
    print(f"{step} steps, last loss {loss.item():.3f} patch px, {time.time() - t0:.0f} s -> "
          f"{out / 'refiner.safetensors'}")
    return 0


def keep_regions(ref: Refiner, regions) -> RefineNet:
    """``ref``'s network with only ``regions``' heads, in that order (the encoder is shared by all)."""
    idx = [ref.regions.index(r) for r in regions]
    model = RefineNet([ref.windows[i].shape for i in idx], ref.model.width)
    sd = ref.model.state_dict()
    new = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    for j, i in enumerate(idx):
        for part in ("embed", "heads"):
            new.update({f"{part}.{j}.{k[len(part) + len(str(i)) + 2:]}": v for k, v in sd.items()
                        if k.startswith(f"{part}.{i}.")})
    model.load_state_dict(new)
    return model


def ship(run: Path, faces: int = 8, shared=None, regions=None, notes=()) -> int:
    """Copy ``run``'s refiner (only ``regions``' heads, if given) to DEFAULT_REFINER and write CARD and CURVE; the
    card's expression response runs the shipped network without and with it; ``notes``: lines for the card."""
    from ..evaluate.expression_response import response_table
    from .ship import plot_curve
    src = run / "refiner.safetensors"
    ref = Refiner(src, load_layout())
    meta = ref.meta
    if regions and list(regions) != ref.regions:
        missing = sorted(set(regions) - set(ref.regions))
        if missing:
            raise SystemExit(f"{src} has no region {', '.join(missing)} (it has {', '.join(ref.regions)})")
        src = run / f"refiner_{'_'.join(regions)}.safetensors"
        save_refiner(keep_regions(ref, regions), src, regions, [ref.windows[ref.regions.index(r)] for r in regions],
                     ref.layout.name, meta)
        ref = Refiner(src, ref.layout)
    summary = plot_curve(run / "log.jsonl", CURVE, meta.get("steps"), "refiner L1 (patch pixels)")
    table = response_table(refiners=("none", str(src)), faces=faces, shared=shared)
    tmp = DEFAULT_REFINER.with_name(DEFAULT_REFINER.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(DEFAULT_REFINER)
    digest = hashlib.sha256(DEFAULT_REFINER.read_bytes()).hexdigest()
    n_params = sum(p.numel() for p in ref.model.parameters())
    command = meta.get("argv") or (f"--out runs/{run.name} --batch {meta['batch']} --lr {meta['lr']} "
                                   f"--width {meta['width']} --seed {meta['seed']} --steps {meta['steps']}")
    table = [ln.replace(str(src), run.name + (f" ({', '.join(ref.regions)})" if regions else "")) for ln in table]
    lines = [
        "# Model card: prn-ict-refine", "",
        ("The refiner (`core/refine.py`): a small network that redraws parts of the main network's position map "
         f"({', '.join(REGION_NAMES[r] for r in ref.regions)}) from {PATCH}-pixel patches of the photo, framed by "
         "the main network's landmarks. Inference runs it, when asked, after the main network's views are merged "
         "(`InferenceOptions.refine`; Preferences -> *Refine Mouth*, `reconstruct --refine`). It moves x, y "
         "inside its UV windows only, faded out towards their borders; depth stays the main network's. Trained by "
         "prn_blender's own script on the same synthetic ICT-FaceKit scenes as the main model (MODEL_CARD.md); no "
         "other data."), "",
        "| field | value |", "|---|---|",
        f"| file | `{DEFAULT_REFINER.name}` (fp16 safetensors, {DEFAULT_REFINER.stat().st_size / 1e6:.1f} MB) |",
        f"| sha256 | `{digest}` |",
        (f"| architecture | conv encoder (width {ref.model.width}) per {PATCH}x{PATCH} patch, a linear head per "
         f"region; {n_params:,} parameters |"),
        "| regions (UV window u0-u1, v0-v1) | " + ", ".join(
            f"{r} ({w.u0}-{w.u1}, {w.v0}-{w.v1})" for r, w in zip(ref.regions, ref.windows)) + " |",
        f"| UV layout | `{ref.layout.name}` |",
        (f"| training data | `{meta['generator']}` scenes, seed {meta['seed']}, {meta['images_seen']:,} scenes "
         "seen |"),
        (f"| training | {meta['steps']:,} steps of batch {meta['batch']}, Adam lr {meta['lr']:g} cosine to 0, "
         f"{meta['wall_time_s'] / 3600:.2f} h on {meta['hardware']} |"), "",
        (f"Reproduce (then `--out RUN --ship{' --regions ' + ' '.join(regions) if regions else ''}` ships it and "
         "measures the table below):"), "", "```",
        f"python -m prn_blender.train.refine {command}", "```", "",
        "## Expression response", "",
        "How much of a probe expression the landmarks follow (`python -m prn_blender.evaluate.expression_response",
        "--refiner none default`): 1 follows it, 0 ignores it; the shipped main network without and with the refiner.",
        "", *table, "", *([*notes, ""] if notes else []),
        "## Training curve", "",
        f"![training curve]({CURVE.name})", "",
        (f"Final running-mean loss {summary['final_loss_mean']:.3f} patch pixels (L1 of the windows' patch "
         f"coordinates, landmark pixels weighted x{LANDMARK_WEIGHT:g})."), "",
    ]
    CARD.write_text("\n".join(lines))
    print(f"shipped {DEFAULT_REFINER} (sha256 {digest[:12]}...), card {CARD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
