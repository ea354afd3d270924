"""Ship a trained run as the add-on's default model: fp16 weights + MODEL_CARD.md + training curve.

    python -m prn_blender.train.ship --run runs/w8 [--average-from STEP] [--eval-aflw DIR...] [--eval-synth DIR...]
    python -m prn_blender.train.ship --metrics-only --eval-aflw DIR... --eval-synth DIR...   # inference changed

DIR are ``eval.py`` output folders (their metrics.json feed the card). Writes
``prn_blender/assets/weights/prn-ict-default.safetensors``, ``MODEL_CARD.md`` and ``training_curve.png`` there.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..core.constants import PHOTO_TURNS, VIDEO_WIDE_EVERY
from ..core.paths import WEIGHTS_DIR
from ..core.weights import (
    DEFAULT_WEIGHTS,
    SHIPPED_DTYPE,
    inference_zoom,
    load_model,
    read_metadata,
    save_weights,
    sha256,
)
from ..evaluate.compare import LEVEL, compare
from ..evaluate.run import PeerModel
from .data import body_of, context_blur_of, detail_of, jpeg_of, photo_backgrounds_of, run_stream, shadows_of, without_of
from .loop import DEFAULT_LOSS, LOSSES, describe_hardware, recalibrate_bn
from .soup import BN_BATCHES, default_bn_batches, mean_state


def _read_log(log: Path, upto: int | None = None) -> list[dict]:
    """A run's log.jsonl records in step order; a resumed run re-logs the steps after its last checkpoint: the
    last record of each step is kept; ``upto``: only the steps the weights have seen."""
    by_step = {}
    for line in log.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if upto is None or r["step"] <= upto:
                by_step[r["step"]] = r
    return [by_step[k] for k in sorted(by_step)]


def _save_loss_plot(fig, ax, out: Path, xlabel: str, loss_kind: str) -> None:
    """Finish a training-loss figure (log loss axis, grid, legend) and write it to ``out``; ``loss_kind``: a
    train.py --loss, else the y label itself."""
    import matplotlib.pyplot as plt
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(LOSSES.get(loss_kind, loss_kind))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _running_mean(loss: np.ndarray) -> tuple[int, np.ndarray]:
    """(window k, the loss's running mean over k records) for the training curves: k = 1 % of the records."""
    k = max(1, len(loss) // 100)
    return k, np.convolve(loss, np.ones(k) / k, mode="valid")


def _log_summary(recs: list[dict]) -> dict:
    """A run's steps, final loss (the last running mean), training time, images seen and lr changes (step, lr), from
    its log records (_read_log)."""
    _, smooth = _running_mean(np.array([r["loss"] for r in recs]))
    lr_steps = [(r["step"], r["lr"]) for i, r in enumerate(recs) if i == 0 or r["lr"] != recs[i - 1]["lr"]]
    return {"steps": int(recs[-1]["step"]), "final_loss_mean": float(smooth[-1]), "elapsed_s": recs[-1]["elapsed"],
            "samples": recs[-1]["samples"], "lr_steps": lr_steps}


def plot_curve(log: Path, out: Path, upto: int | None = None,
               loss_kind: str = DEFAULT_LOSS, ancestors: list | None = None) -> dict:
    """Plot the run's loss against images seen to ``out`` (runs of different batch sizes share the axis) and
    summarize the run (its steps up to ``upto``). ``ancestors``: the logs of the runs it was fine-tuned from
    (train.py --init), oldest first, drawn before it with a line at each hand-over; the summary is the run's
    own."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    offset = 0
    segments = [(Path(a), None) for a in ancestors or []] + [(log, upto)]
    for i, (path, limit) in enumerate(segments):
        recs = _read_log(path, limit)
        seen = np.array([r["samples"] for r in recs]) + offset
        loss = np.array([r["loss"] for r in recs])
        k, smooth = _running_mean(loss)
        own = i == len(segments) - 1
        name = "" if len(segments) == 1 else f" ({path.parent.name})"
        ax.plot(seen, loss, alpha=0.25, lw=0.6, color="C0", label="loss" if own else None)
        ax.plot(seen[k - 1:], smooth, lw=1.5, color=f"C{i + 1}", label=f"running mean ({k}){name}")
        if offset:
            ax.axvline(offset, color="gray", lw=0.8, ls=":")
        offset = int(seen[-1])
    _save_loss_plot(fig, ax, out, "images seen", loss_kind)
    return _log_summary(recs)


def average_snapshots(run: Path, first: int, last: int | None = None) -> tuple[dict, list[int]]:
    """Mean (fp32) of the weights kept in ``run/snapshots`` (train.py --keep-every) at steps first..last: the
    state dict and the steps averaged. Averaging the constant-lr tail of a run (stochastic weight averaging) lands
    nearer the centre of the basin the last steps wander in; BatchNorm statistics must be recalibrated after."""
    from safetensors.torch import load_file
    snaps = sorted((int(p.stem.split("_")[-1]), p) for p in (run / "snapshots").glob("weights_*.safetensors"))
    snaps = [(s, p) for s, p in snaps if s >= first and (last is None or s <= last)]
    if len(snaps) < 2:
        raise SystemExit(f"fewer than 2 snapshots in {run / 'snapshots'} from step {first}: nothing to average")
    try:
        sd = mean_state((f"snapshot {p.name}", load_file(str(p))) for _, p in snaps)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return sd, [s for s, _ in snaps]


def averaged_text(steps: list[int]) -> tuple[str, int]:
    """The weights' record of a snapshot average over ``steps`` (ascending) and the snapshot spacing
    (train.py --keep-every): its most common gap; a run that stopped off the grid (--max-time) adds its last step."""
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    every = max(set(gaps), key=lambda g: (gaps.count(g), g))
    last = " and the last step" if len(gaps) > 1 and gaps[-1] != every else ""
    return f"mean of {len(steps)} snapshots, steps {steps[0]}-{steps[-1]} (every {every}{last})", every


def _lineage(parent: dict) -> str:
    """One card line for the weights a fine-tuning run started from (train.py --init), recursively."""
    out = (f"`{parent['file']}` sha256 `{parent['sha256'][:12]}...`: {parent['steps']} steps, "
           f"{parent['images_seen']:,} images, {parent['wall_time_s'] / 3600:.2f} h; {parent['preset_history']}"
           + (f"; {parent['averaged']}" if parent.get("averaged") else "")
           + (f"; then widened: {parent['widened']}" if parent.get("widened") else ""))
    return out + (f"; itself fine-tuned from {_lineage(parent['parent'])}" if parent.get("parent") else "")


def _train_command(meta: dict, run: str, width: int, batch: int, reuse: int, first_lr: float, warmup: int,
                   epoch_size: int, args: dict) -> str:
    """The train.py command of the run ``run`` whose weights record ``meta``."""
    cosine = meta.get("schedule") == "cosine"
    loss = meta.get("loss", DEFAULT_LOSS)
    generator = meta.get("generator", "")
    without, blur, detail = without_of(generator), context_blur_of(generator), detail_of(generator)
    photo, jpeg, body = photo_backgrounds_of(generator), jpeg_of(generator), body_of(generator)
    shadows = shadows_of(generator)
    parent = meta.get("parent")
    return (f"python train.py --out runs/{run} --width {width} --batch {batch} --reuse {reuse} "
            + (f"--render-batches {meta['render_batches']} " if int(meta.get("render_batches", 1)) > 1 else "")
            + (f"--preset {meta['preset']} " if cosine else "") + f"--lr {first_lr:g}"
            + (f" --warmup {warmup}" if warmup else "")
            + (f" --loss {loss}" if loss != DEFAULT_LOSS else "")
            + (f" --lid-weight {meta['lid_weight']:g}" if meta.get("lid_weight") else "")
            + (f" --without {','.join(without)}" if without else "")
            + (f" --context-blur {blur:g}" if blur else "")
            + (" --detail" if detail else "")
            + (f" --photo-backgrounds {photo:g}" if photo else "")
            + (f" --jpeg {jpeg:g}" if jpeg else "")
            + (f" --body {body:g}" if body else "")
            + (f" --shadows {shadows:g}" if shadows else "")
            + (f" --yaw-uniform {float(meta['yaw_uniform']):g}" if "yaw_uniform" in meta else "")
            + (" --freeze-bn" if meta.get("bn_frozen") else "")
            + (f" --schedule cosine --max-time {float(meta.get('max_time', 0)):g} --amp {meta.get('amp')}" if cosine
               else f" --epoch-size {epoch_size}") + f" --seed {meta.get('seed')}" + ("" if cosine else " --steps N")
            + (f" --keep-every {meta.get('average_every') or args.get('keep_every') or 'K'}" if meta.get("averaged")
               else "") + (f" --init {parent['file']}   # the model above" if parent else ""))


def _first_lr(meta: dict, lr_steps: list, warmup: int) -> float:
    """The lr a run's train.py command gives (--lr): a cosine run's peak, else its first phase's after the warm-up."""
    return float(meta["lr"]) if meta.get("schedule") == "cosine" else _lr_phases(lr_steps, warmup)[0][1]


def _chain_totals(parent: dict | None) -> tuple[int, int, float]:
    """(steps, images seen, training wall time s) of a fine-tuning run's ancestors (train.py --init), all
    generations."""
    if not parent:
        return 0, 0, 0.0
    s, n, t = _chain_totals(parent.get("parent"))
    return s + parent["steps"], n + parent["images_seen"], t + parent["wall_time_s"]


def _lr_phases(lr_steps: list, warmup: int) -> list:
    """The halving schedule's phases after the warm-up: (first step, lr) of each, from ``lr_steps`` (where the
    logged lr changed)."""
    return [(s0, lr) for s0, lr in lr_steps if s0 >= warmup] or lr_steps[-1:]


def _lr_text(meta: dict, lr_steps: list, warmup: int, steps: int) -> str:
    """The card's learning-rate schedule: the linear warm-up, then cosine annealing (train.py --schedule cosine)
    or the halving schedule's phases."""
    text = f"linear warm-up over the first {warmup} steps, " if warmup else ""
    if meta.get("schedule") == "cosine":
        return text + f"then cosine from {float(meta['lr']):g} to 0 over {steps} steps"
    return text + ", ".join(f"{lr:g} from step {s0}" for s0, lr in _lr_phases(lr_steps, warmup))


def _metrics_table(dirs: list | None, title: str) -> list[str]:
    """Markdown table of the models in one or more eval.py output folders of the same dataset and crop."""
    found = [json.loads((Path(d) / "metrics.json").read_text()) for d in dirs or []
             if (Path(d) / "metrics.json").exists()]
    if not found:
        return []
    m = found[0]
    for other in found[1:]:
        m["models"].update(other["models"])
    lines = [f"### {title} ({m['dataset']}, n={m['n']}, crop={m['crop']})", "",
             "| model | NME2D 0-30 | 30-60 | 60-90 | mean | all | NME3D all | head yaw error / under-estimate (deg) |",
             "|---|---|---|---|---|---|---|---|"]
    f = lambda x: "-" if x is None else f"{x:.2f}"
    for k, v in m["models"].items():
        b = v["nme2d"]
        yaw = (f"{v['yaw_abs_err']['all']:.1f} / {v['yaw_under']['all']:+.1f}" if v.get("yaw_abs_err") else "-")
        lines.append(f"| {k} | {f(b['0-30'])} | {f(b['30-60'])} | {f(b['60-90'])} | {f(b['mean'])} | {f(b['all'])} | "
                     f"{f(v['nme3d']['all'])} | {yaw} |")
    extra = [f"- {k}: dense NME {v['nme_dense']:.2f} %, ICP-aligned reconstruction NME {v['recon_icp_iod']:.2f} % "
             f"(outer inter-ocular)" for k, v in m["models"].items() if "nme_dense" in v]
    if "ours" in m["models"] and PeerModel.name in m["models"]:
        c = compare(m["models"][PeerModel.name]["per_image"], m["models"]["ours"]["per_image"], per_source=False)
        extra.append(f"- ours - {PeerModel.name}: {c.diff:+.2f} NME2D all, {LEVEL * 100:g} % paired-bootstrap "
                     f"interval [{c.low:+.2f}, {c.high:+.2f}] over these {c.n} images "
                     f"(`python -m prn_blender.evaluate.compare`); ours better on {c.better}, worse on {c.worse}")
    per = [""]
    if m["n"] <= 50:   # small real sets: the per-image table too
        names = list(m["models"])
        per = ["", "| image | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for img in m["models"][names[0]]["per_image"]:
            per.append(f"| {img} | " + " | ".join(f(m["models"][k]["per_image"].get(img)) for k in names) + " |")
        per.append("")
    return lines + [""] + extra + per


#: the card's evaluation commands (the one-view and single-pass rows run as video does: no wide periphery view)
EVAL_COMMANDS = (
    "python eval.py --dataset aflw2000 --data ../shared/aflw2000-3d --crop roi --out out/eval_aflw",
    ("python eval.py --dataset aflw2000 --data ../shared/aflw2000-3d --crop roi --turns 0 --no-periphery --no-peer "
     "--out out/eval_aflw_one_view"),
    ("python eval.py --dataset aflw2000 --data ../shared/aflw2000-3d --crop roi --turns 0 --no-flip --no-periphery "
     "--no-peer --out out/eval_aflw_single"),
    "python eval.py --dataset aflw2000 --data ../shared/aflw2000-3d --crop detector --out out/eval_aflw_detector",
    "python eval.py --dataset synthetic --n 200 --seed 777 --out out/eval_synth",
)
#: ship's arguments that read those commands' folders (the card's last recipe line)
EVAL_ARGS = ("--eval-aflw out/eval_aflw out/eval_aflw_one_view out/eval_aflw_single --eval-synth out/eval_synth "
             "--eval-aflw-detector out/eval_aflw_detector")
METRICS_HEAD = "## Metrics (68-point NME %, normalized by sqrt(w*h) of the GT box)"
CONTEXT_HEAD = "- Context:"


def _landmark_text(meta: dict) -> list[str]:
    """The Metrics section's paragraph on where the landmarks are read, when the weights record calibrated pixels
    (evaluate.calibrate_landmarks)."""
    c = meta.get("landmark_calibration")
    if not c:
        return []
    cv = "; ".join(f"fitted on {x['fitted_on']}, {x['measured_on']} {x['before']:.2f} -> {x['after']:.2f} %"
                   for x in c["cross_validation"])
    src = c.get("copied_from")
    return [
        ("Landmarks are read at the 68 UV pixels the weights record (`landmark_uv`), each within "
         f"{c['radius']} UV pixels of the layout's own: fitted by "
         "`python -m prn_blender.evaluate.calibrate_landmarks`"
         + (f" for `{src['file']}` (sha256 `{src['sha256'][:12]}...`; `--copy-from` recorded them here)" if src
            else "")),
        (f"on {c['faces']} real faces that are not evaluation images (the pseudo set: "
         f"{', '.join(c['sources'])}; labels by the 3DDFA_V2 peer), NME there {c['nme_before']:.2f} -> "
         f"{c['nme_after_in_sample']:.2f} % in-sample. Cross-validated ({cv})."),
        ("The surface, the mesh and the crops are unchanged (crops from landmarks read the layout's own pixels). The "
         "held-out synthetic set's labels are the layout's own pixels, so its NME includes the calibration's "
         "offsets."), ""]


def _metrics_section(a, zoom: float, meta: dict) -> list[str]:
    """The card's Metrics section, from the eval.py folders of ``a`` (ship's arguments); the inference it describes
    is the code's defaults with the model's crop ``zoom`` and its landmark pixels (``meta``)."""
    return [
        METRICS_HEAD, "",
        (f"Default inference (`ours`): crops made from a detector box or from landmarks shrunk by {zoom:g} "
         "about their centre (the weights' `inference_zoom`, else `core.constants.INFERENCE_ZOOM`; measured on real "
         "faces that are"),
        ("not evaluation images; the dataset's roi boxes are used as given), mirror averaging and "
         f"{len(PHOTO_TURNS)} views of each crop turned by " + ", ".join(f"{x:g}" for x in PHOTO_TURNS)
         + " degrees (`core.constants.PHOTO_TURNS`), and one"),
        (f"{zoom:g}x wider view, the un-zoomed crop, for the surface outside the landmarks' hull (it does not move "
         "the landmarks). `ours_one_view`"),
        "is mirror averaging only, which is what video runs; `ours_single_pass` is neither.", "",
        *_landmark_text(meta),
        *_metrics_table(a.eval_aflw, "Real photos: the 16 AFLW2000-3D images in ../shared"),
        *([("With the face detector's crops instead of the dataset's roi boxes: what `reconstruct` and the add-on do "
            "with a photo"),
           ("(the detector's box in one view, `core.constants.FIRST_PASS_VIEWS`, then a second pass cropped from "
            "the first pass's landmarks, `InferenceOptions.recrop`,"),
           ("whose views run once more with the surround blurred outside those landmarks and give all but the jaw "
            "line, `core.constants.SURROUND_BLUR`, `JAW_SHARP`)."), ""] if a.eval_aflw_detector else []),
        *_metrics_table(a.eval_aflw_detector, "Real photos, detector crops"),
        *_metrics_table(a.eval_synth, "Held-out synthetic set"),
    ]


def context_blurs(meta: dict) -> tuple[float, ...]:
    """The context-blur share (train.py --context-blur) of a model's training: one per soup ingredient."""
    return tuple(context_blur_of(i.get("generator", "")) for i in meta.get("soup") or [meta])


def _context_limit(blurs: tuple[float, ...], zoom: float) -> list[str]:
    """The Limits section's last entry: context and crops."""
    return [
        f"{CONTEXT_HEAD} the background, hair and clothes around a real face mislead the model more than those of",
        "  synthetic scenes. On real faces that are not evaluation images (`eval.py --dataset pseudo`), tighter",
        "  crops bring its landmarks much closer to the peer's, where synthetic faces want the training crop: hence",
        f"  the zoom of {zoom:g} (`python -m prn_blender.evaluate.calibrate_zoom`). The zoomed crop cuts",
        "  more forehead and neck, which the wider view gives back; video runs that view on every",
        f"  {VIDEO_WIDE_EVERY}th frame only and carries it rigidly to the frames between (`blend --no-wide-view`: the",
        "  zoomed crop's own forehead and neck), so non-rigid change out there (the neck as the head turns) lags.",
        *([f"  This run blurred the surround of {blurs[0]:.0%} of its training scenes (`train.py --context-blur`), so",
           "  that the model trusts it less."] if len(blurs) == 1 and blurs[0] else []),
        *([("  The soup's ingredients blurred the surround of " + " / ".join(f"{b:.0%}" for b in blurs)
            + " of their training"), "  scenes (`train.py --context-blur`), so that the model trusts it less."]
          if len(blurs) > 1 and any(blurs) else []),
    ]


def _card_head(model, lay, digest: str) -> list[str]:
    """The card's title, summary and first table rows (file, sha256, architecture, layout)."""
    n_params = sum(p.numel() for p in model.parameters())
    return [
        "# Model card: prn-ict-default", "",
        "PRN (ResFCN256 position-map regression) trained only on synthetic faces rendered from the MIT-licensed",
        "ICT-FaceKit model by prn_blender's own data engine. No PRNet weights, 300W-LP, BFM model or evaluation images",
        "were used for training. The layout's 68 landmark pixels follow the iBUG-68 3D convention of BFM-based data",
        "(AFLW2000-3D, 300W-LP): they are the landmarks of the mean face in PRNet's MIT-licensed uv-data, moved onto",
        "the ICT surface (`synth/uvmap.py`; ICT-FaceKit's own landmark vertices sit up to 1.7 cm off on the jaw).", "",
        "| field | value |", "|---|---|",
        f"| file | `{DEFAULT_WEIGHTS.name}` (fp16 safetensors, {DEFAULT_WEIGHTS.stat().st_size / 1e6:.1f} MB) |",
        f"| sha256 | `{digest}` |",
        f"| architecture | ResFCN256, width {model.width} (full PRN = 16), {n_params:,} parameters |",
        f"| UV layout | `{lay.name}` ({lay.n_vertices} vertices, {len(lay.triangles)} triangles) |",
    ]


def _limits(images: int, blurs: tuple[float, ...], zoom: float) -> list[str]:
    """The card's Limits section; ``images``: synthetic images seen in all."""
    return [
        "## Limits", "",
        f"- Trained on {images:,} synthetic images in all, far fewer than PRN's 300W-LP schedule; expect",
        "  larger errors than the paper on real photos, especially at large yaw (see the table).",
        "- Synthetic appearance is a domain gap: procedural skin, no beards beyond stubble; hair volume, fringes,",
        "  locks and glasses are drawn in 2D over the bald ICT head (generator 3). Hair over the face, sunglasses",
        "  and in-plane rotation beyond about 45 deg (below it the re-crop turns with the head's roll,",
        "  `core.constants.ROLL_FREE`) are where real photos fail most.",
        "- Head yaw: on real photos the predicted face turns less than the real head (the tables' under-estimate,",
        "  mean |GT yaw| - |predicted yaw|); the predicted 2D geometry itself is under-rotated (a pose fit on x, y",
        "  alone gives the same bias), so head-pose keys are damped on strongly turned heads.",
        "- Expressions: the network alone follows an opening jaw but little of a smile and almost none of a blink, a",
        "  pucker or raised brows: it draws close to the average expression (`python -m",
        "  prn_blender.evaluate.expression_response` measures it, the 3DDFA_V2 peer alongside with `--peer`).",
        "  The opt-in refiner (Preferences -> Refine Mouth, `reconstruct --refine`; REFINER_CARD.md) redraws the",
        "  mouth from a close-up patch, so smiles and puckers show; blinks and brow raises barely do, so animation",
        "  from video shows mouth motion more than eye and brow motion.",
        *_context_limit(blurs, zoom),
    ]


def rewrite_metrics(card: Path, a, blurs: tuple[float, ...], zoom: float, meta: dict) -> None:
    """Replace an existing card's evaluation commands, Metrics section and Limits' context entry (after an
    inference change: the weights, their training and its logs stay as the card says)."""
    lines = card.read_text().split("\n")
    evals = [i for i, x in enumerate(lines) if x.startswith("python eval.py ")]
    if evals:
        lines[evals[0]:evals[-1] + 1] = EVAL_COMMANDS
    try:
        m0, m1 = lines.index(METRICS_HEAD), lines.index("## Training curve")
        c0 = next(i for i, x in enumerate(lines) if x.startswith(CONTEXT_HEAD))
    except (ValueError, StopIteration):
        raise SystemExit(f"{card}: no Metrics section, Training curve section or context limit to replace") from None
    c1 = next((i for i in range(c0 + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    out = lines[:m0] + _metrics_section(a, zoom, meta) + lines[m1:c0] + _context_limit(blurs, zoom) + lines[c1:]
    card.write_text("\n".join(out))


def soup_ingredients(meta: dict, runs: list) -> list[tuple[Path, dict, list | None]]:
    """(run folder, its weights' metadata, its log records up to its weights' step) of each ingredient of a soup's
    ``meta``, from ``runs`` (their folders, in the soup's order). An ingredient that is itself a soup (the model
    shipped before: a folder with its weights alone) has no log records (None): its training is its own card's.
    Refuses folders whose weights are not the ones the soup averaged."""
    ing = meta.get("soup")
    if not ing:
        raise SystemExit("not a model soup (no 'soup' in its metadata): ship it with --run")
    if len(runs) != len(ing):
        raise SystemExit(f"the soup has {len(ing)} ingredients; --ingredients gives {len(runs)} run folders")
    out = []
    for n, (i, run) in enumerate(zip(ing, map(Path, runs)), 1):
        w = run / "weights.safetensors"
        if not w.is_file() or sha256(w) != i["sha256"]:
            raise SystemExit(f"{w}: not the soup's ingredient {n} of {len(ing)} ({i['file']}, sha256 "
                             f"{i['sha256'][:12]}...): give the run folders in the soup's order")
        md = read_metadata(w)["meta"]
        log = run / "log.jsonl"
        recs = _read_log(log, md.get("steps")) if log.is_file() else None
        if not recs and not md.get("soup"):
            raise SystemExit(f"{log}: not found or empty (only an ingredient that is itself a soup comes without a "
                             "log)")
        out.append((run, md, recs or None))
    return out


def plot_ingredients(ingredients: list, out: Path, loss_kind: str = DEFAULT_LOSS) -> None:
    """The training curves of a soup's ingredients (fine-tunes of one model, side by side from 0) against images
    seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (run, md, recs) in enumerate(ingredients):
        if recs is None:                       # a soup: its ingredients' curves are on its own card
            continue
        seen, loss = np.array([r["samples"] for r in recs]) / 1000, np.array([r["loss"] for r in recs])
        k, smooth = _running_mean(loss)
        ax.plot(seen, loss, alpha=0.15, lw=0.6, color=f"C{i}")
        ax.plot(seen[k - 1:], smooth, lw=1.5, color=f"C{i}", ls=("-", "--", ":")[i % 3],
                label=f"{run.name} ({md.get('preset')}): running mean ({k})")
    _save_loss_plot(fig, ax, out, "images seen (thousands)", loss_kind)


def _bn_flag(meta: dict) -> str:
    """The soup command's ``--bn-batches`` when the soup was made with other than its default (train.soup)."""
    bn = meta.get("bn_recalibrated_batches", 0)
    return "" if bn == default_bn_batches(meta) else f" --bn-batches {bn}"


def ship_soup(a) -> int:
    """Ship a model soup (train.soup) with its card: its ingredients' runs, their common ancestor, the recipe."""
    soup = Path(a.soup)
    model, lay, md = load_model(soup)
    meta = dict(md["meta"])
    ingredients = soup_ingredients(meta, a.ingredients)
    hardware = sorted({m.get("hardware", "?") for _, m, _ in ingredients})
    meta.update({"hardware": ", ".join(hardware), "shipped_from": soup.parent.name if soup.name ==
                 "weights.safetensors" else soup.stem})
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    plot_ingredients(ingredients, WEIGHTS_DIR / "training_curve.png")
    save_weights(model, DEFAULT_WEIGHTS, lay.name, meta, dtype=SHIPPED_DTYPE)
    digest = sha256(DEFAULT_WEIGHTS)
    parent = meta["parent"]
    before = _chain_totals(parent)
    zoom = inference_zoom(meta)
    curves = [_log_summary(recs) if recs is not None else {"steps": int(m["steps"]), "samples": int(m["images_seen"]),
                                                 "elapsed_s": float(m["wall_time_s"])} for _, m, recs in ingredients]
    images = sum(c["samples"] for c in curves)
    rows, recipe = [], []
    for i, (run, m, recs), c in zip(meta["soup"], ingredients, curves):
        if recs is None:                       # the model shipped before, itself a soup
            rows.append(f"| ingredient `{run.name}` | sha256 `{i['sha256'][:12]}...`; the model shipped before, "
                        f"{m.get('preset_history')}; {c['steps']} steps, {c['samples']:,} images seen, "
                        f"{c['elapsed_s'] / 3600:.2f} h of training in all (its card: the git history of this "
                        "file) |")
            shipped = Path(*DEFAULT_WEIGHTS.parts[-4:]).as_posix()       # prn_blender/assets/weights/...
            recipe.append(f"# {run.name}: the model shipped before (sha256 {i['sha256'][:12]}...): "
                          f"git show REV:{shipped} > runs/{run.name}/weights.safetensors  (REV: git log -- {shipped})")
            continue
        warmup = int(m.get("warmup") or 0)
        rows.append(
            f"| ingredient `{run.name}` | sha256 `{i['sha256'][:12]}...`; {c['steps']} steps, "
            f"batch {m.get('batch')}, {c['samples']:,} images seen (each render served {int(m.get('reuse', 0)) + 1}x), "
            f"generator `{m.get('generator')}`, seed {m.get('seed')}, region weights {m.get('preset_history')}, "
            f"Adam lr {_lr_text(m, c['lr_steps'], warmup, c['steps'])}, autocast {m.get('amp')}; "
            + (f"{m['averaged']}; " if m.get("averaged") else "")
            + ("BatchNorm frozen; " if m.get("bn_frozen") else "")
            + f"{m.get('hardware')}, {c['elapsed_s'] / 3600:.2f} h; final loss {c['final_loss_mean']:.5f} |")
        recipe += [f"# {run.name}: {m.get('hardware')}"
                   + (" (tools/gpu_train.sh: this command, then the snapshot mean)" if m.get("device") == "cuda"
                      else ""),
                   _train_command(m, run.name, model.width, int(m.get("batch", 16)), int(m.get("reuse", 0)),
                                  _first_lr(m, c["lr_steps"], warmup), warmup, int(m.get("epoch_size", 5000)), {})]
        if m.get("averaged"):
            recipe.append(f"python -m prn_blender.train.ship --run runs/{run.name} --average-from "
                          f"{m['average_from']} --device {m.get('device', 'cpu')} --out-weights "
                          f"runs/{run.name}/weights.safetensors")
    runs = " ".join(f"runs/{r.name}" for r, _, _ in ingredients)
    card = [
        *_card_head(model, lay, digest),
        f"| data | {meta.get('data')}; generators "
        + ", ".join(f"`{g}`" for g in dict.fromkeys(m.get("generator") for _, m, _ in ingredients)) + " |",
        (f"| training | a model soup (`python -m prn_blender.train.soup`): the uniform mean of the weights of "
         f"{len(ingredients)} fine-tunes of the model below (Wortsman et al. 2022, \"Model soups\"), "
         + (f"BatchNorm recalibrated on {meta['bn_recalibrated_batches']} fresh synthetic batches of 16 of "
            f"`{meta.get('generator')}` after averaging |" if meta.get("bn_recalibrated_batches") else
            "BatchNorm statistics the ones every ingredient has, kept |"
            if meta.get("bn_shared") else "BatchNorm statistics the mean of the ingredients' |")),
        *rows,
        f"| fine-tuned from | {_lineage(parent)} |",
        (f"| in all | {before[0] + sum(c['steps'] for c in curves)} steps, {before[1] + images:,} images "
         f"seen, {(before[2] + sum(c['elapsed_s'] for c in curves)) / 3600:.2f} h of training |"),
        "| license | weights: GPL-3.0-or-later with the add-on; inputs: ICT-FaceKit (MIT) |", "",
        "## How it was made", "",
        "```", "python -m prn_blender.synth.uvmap            # layout asset: ICT-FaceKit UVs, landmarks from prnet-bfm",
        *a.recipe, *recipe,
        f"python -m prn_blender.train.soup --out {soup.as_posix()} "
        + " ".join(f"runs/{r.name}/weights.safetensors" for r, _, _ in ingredients) + _bn_flag(meta),
        *([meta["landmark_calibration"]["command"]] if meta.get("landmark_calibration") else []),
        *EVAL_COMMANDS,
        f"python -m prn_blender.train.ship --soup {soup.as_posix()} --ingredients {runs} {EVAL_ARGS}",
        "```", "", *_metrics_section(a, zoom, meta),
        "## Training curve", "", "![training curve](training_curve.png)", "",
        ("The curves are the soup's ingredients, each a fine-tune of the model above; the earlier models' curves are "
         "in the git history of this file."), "",
        *_limits(before[1] + images, context_blurs(meta), zoom),
    ]
    (WEIGHTS_DIR / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    print(f"shipped the soup {soup} as {DEFAULT_WEIGHTS} ({digest[:12]}), card {WEIGHTS_DIR / 'MODEL_CARD.md'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="training output folder (weights.safetensors, log.jsonl); required unless "
                                   "--metrics-only or --soup")
    ap.add_argument("--soup", help="ship this model soup (python -m prn_blender.train.soup) instead of a run")
    ap.add_argument("--ingredients", nargs="+", default=[],
                    help="with --soup: the run folders of its ingredients, in the soup's order (their weights must "
                         "be the ones averaged; their logs draw the training curve)")
    ap.add_argument("--eval-aflw", nargs="+", help="eval.py output folder(s) on AFLW2000-3D")
    ap.add_argument("--eval-synth", nargs="+", help="eval.py output folder(s) on the held-out synthetic set")
    ap.add_argument("--eval-aflw-detector", nargs="+",
                    help="eval.py output folder(s) on AFLW2000-3D with --crop detector (what users get)")
    ap.add_argument("--bn-batches", type=int, default=BN_BATCHES,
                    help="recalibrate BatchNorm statistics on this many fresh synthetic batches of 16 (0 = off)")
    ap.add_argument("--shared", help="development data folder (for the BN recalibration batches)")
    ap.add_argument("--average-from", type=int,
                    help="ship the mean of the run's snapshots from this step to the run's last step instead of "
                         "the last weights (BatchNorm is then always recalibrated)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the BatchNorm recalibration batches are rendered and run")
    ap.add_argument("--out-weights", help="write here instead of the shipped default (for trying a checkpoint)")
    ap.add_argument("--card-only", action="store_true",
                    help="keep the shipped weights as they are (the ones just evaluated); rewrite card and curve")
    ap.add_argument("--zoom", type=float,
                    help="record this inference crop zoom in the weights (python -m prn_blender.evaluate."
                         "calibrate_zoom measures it; default: what the weights record, else "
                         "constants.INFERENCE_ZOOM)")
    ap.add_argument("--metrics-only", action="store_true",
                    help="keep the shipped weights and their card; rewrite only the card's eval commands, Metrics "
                         "section (from the eval folders) and context limit (after a change of the default inference)")
    ap.add_argument("--ancestor-logs", nargs="+", default=[],
                    help="log.jsonl of the runs this one was fine-tuned from, oldest first: the training curve "
                         "shows them before it")
    ap.add_argument("--recipe", nargs="+", default=[], metavar="LINE",
                    help="lines for the card's How-it-was-made block before the run's own command (e.g. the "
                         "tools/gpu_train.sh calls of the models it was fine-tuned from)")
    ap.add_argument("--hardware", help="what the run trained on (default: as train.py recorded it, else this "
                                       "machine)")
    a = ap.parse_args(argv)
    if a.metrics_only:
        if a.zoom is not None:
            ap.error("--zoom writes the weights: not with --metrics-only")
        meta = read_metadata(DEFAULT_WEIGHTS)["meta"]
        rewrite_metrics(WEIGHTS_DIR / "MODEL_CARD.md", a, context_blurs(meta),
                        inference_zoom(meta), meta)
        print(f"rewrote the metrics of {WEIGHTS_DIR / 'MODEL_CARD.md'}")
        return 0
    if a.soup:
        if a.run or a.average_from is not None or a.card_only or a.zoom is not None:
            ap.error("--soup ships the soup file as it is: not with --run, --average-from, --card-only or --zoom")
        return ship_soup(a)
    if not a.run:
        ap.error("--run is required (unless --metrics-only or --soup)")
    run = Path(a.run)
    model, lay, md = load_model(DEFAULT_WEIGHTS if a.card_only else run / "weights.safetensors")
    meta = dict(md["meta"])
    args = {}
    if (run / "checkpoint.pt").exists():   # the exact training arguments (reuse, epoch size, ...)
        args = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True).get("args", {})
    if a.average_from is not None and not a.card_only:
        if not a.bn_batches:
            raise SystemExit("--average-from needs BatchNorm recalibration (--bn-batches > 0)")
        sd, steps = average_snapshots(run, a.average_from, int(meta["steps"]))
        model.load_state_dict(sd, strict=False)
        meta["averaged"], every = averaged_text(steps)
        meta["steps"], meta["average_from"], meta["average_every"] = steps[-1], steps[0], every
    if a.bn_batches and not a.card_only:
        stream = run_stream(meta, 16, 424242, shared=a.shared, device=a.device)
        recalibrate_bn(model.to(a.device), (next(stream)[0] for _ in range(a.bn_batches)))
        model.cpu().eval()
        meta["bn_recalibrated_batches"] = a.bn_batches
    if a.zoom is not None:
        if a.card_only:
            ap.error("--zoom writes the weights: not with --card-only")
        meta["inference_zoom"] = a.zoom
        inference_zoom(meta)                                  # in range
    hardware = a.hardware or meta.get("hardware") or describe_hardware(torch.device("cpu"))
    meta.update({"hardware": hardware, "shipped_from": run.name})
    if a.out_weights:
        save_weights(model, a.out_weights, lay.name, meta, dtype=SHIPPED_DTYPE)
        print(a.out_weights)
        return 0
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    batch = int(meta.get("batch", args.get("batch", 16)))
    reuse = int(meta.get("reuse", args.get("reuse", 0)))           # the weights' record, else the checkpoint's
    epoch_size = int(meta.get("epoch_size", args.get("epoch_size", 5000)))
    loss = meta.get("loss", DEFAULT_LOSS)
    blur = context_blur_of(meta.get("generator", ""))      # train.py --context-blur: the recipe and the Limits say it
    zoom = inference_zoom(meta)
    curve = plot_curve(run / "log.jsonl", WEIGHTS_DIR / "training_curve.png", meta.get("steps"), loss,
                       a.ancestor_logs)
    if not a.card_only:
        save_weights(model, DEFAULT_WEIGHTS, lay.name, meta, dtype=SHIPPED_DTYPE)
    digest = sha256(DEFAULT_WEIGHTS)
    parent = meta.get("parent")
    warmup = int(meta.get("warmup") or args.get("warmup") or 0)
    lr_text = _lr_text(meta, curve["lr_steps"], warmup, curve["steps"])
    cosine = meta.get("schedule") == "cosine"
    before = _chain_totals(parent)
    phases = (meta.get("preset_history") or "").count(" from step ")
    first_lr = _first_lr(meta, curve["lr_steps"], warmup)
    card = [
        *_card_head(model, lay, digest),
        f"| data | {meta.get('data')}; generator `{meta.get('generator')}`; seed {meta.get('seed')}"
        + (f"; yaw uniform over +-90 deg in {float(meta['yaw_uniform']):.0%} of the scenes (train.py --yaw-uniform)"
           if "yaw_uniform" in meta else "") + " |",
        f"| training | {curve['steps']} steps, batch {batch}, {curve['samples']:,} images seen "
        f"(each render served {reuse + 1}x with fresh augmentation), "
        f"region weights (data generator) {meta.get('preset_history') or meta.get('preset')}, "
        + ("loss W x ||P - P~|| (train.py --loss euclid), " if loss == "euclid" else "")
        + f"Adam lr {lr_text}, autocast {meta.get('amp')} |",
        *([f"| fine-tuned from | {_lineage(parent)} |",
           f"| in all | {before[0] + curve['steps']} steps, {before[1] + curve['samples']:,} images "
           f"seen, {(before[2] + curve['elapsed_s']) / 3600:.2f} h of training |"] if parent else []),
        f"| hardware | {hardware}; wall time {curve['elapsed_s'] / 3600:.2f} h"
        + (" (this run)" if parent else "") + " |",
        f"| final training loss | {curve['final_loss_mean']:.5f} (running mean, {LOSSES[loss]}) |",
        *([f"| weight averaging | {meta['averaged']} (stochastic weight averaging of the "
           f"{'annealed' if cosine else 'constant-lr'} tail) |"]
          if meta.get("averaged") else []),
        (f"| BatchNorm statistics | recalibrated on {meta.get('bn_recalibrated_batches', 0)} fresh synthetic "
         "batches of 16 after training |" if meta.get("bn_recalibrated_batches") or not meta.get("bn_frozen")
         else "| BatchNorm statistics | frozen during this run (train.py --freeze-bn): those it started from |"),
        "| license | weights: GPL-3.0-or-later with the add-on; inputs: ICT-FaceKit (MIT) |", "",
        "## How it was made", "",
        "```", "python -m prn_blender.synth.uvmap            # layout asset: ICT-FaceKit UVs, landmarks from prnet-bfm",
        *a.recipe,
        *([(f"# on a GPU: tools/gpu_train.sh ran{' the widening (train.widen),' if parent.get('widened') else ''} "
            "this command and the snapshot averaging (train.ship) in one device call")]
          if parent and meta.get("device", "").startswith("cuda") else []),
        _train_command(meta, run.name, model.width, batch, reuse, first_lr, warmup, epoch_size, args),
        *([(f"# ... resumed with --resume and the --preset / --lr of each phase above; stopped after "
            f"{curve['steps']} steps")] if phases > 1 or not cosine else []),
        *EVAL_COMMANDS,
        f"python -m prn_blender.train.ship --run runs/{run.name} "
        + (f"--average-from {meta['average_from']} " if meta.get("averaged") else "")
        + EVAL_ARGS,
        "```", "", *_metrics_section(a, zoom, meta),
        "## Training curve", "", "![training curve](training_curve.png)", "",
        *([("The curve shows this fine-tuning run"
             + (f" after {', '.join(Path(x).parent.name for x in a.ancestor_logs)}" if a.ancestor_logs else "")
             + "; the earlier models' curves are in the git history of this file."), ""] if parent else []),
        *_limits(before[1] + curve["samples"], (blur,), zoom),
    ]
    (WEIGHTS_DIR / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    print(f"shipped {DEFAULT_WEIGHTS} ({digest[:12]}), card {WEIGHTS_DIR / 'MODEL_CARD.md'}")
    assert read_metadata(DEFAULT_WEIGHTS)["layout"] == lay.name
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
