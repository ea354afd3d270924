"""Train ResFCN256 on synthetic ICT-FaceKit faces with the PRN recipe.

Loss: mean over pixels of the layout weight mask x squared error of position maps normalized by POS_SCALE
(``--loss mse``), or x their Euclidean distance (``--loss euclid``: the paper's sum of W * ||P - P~||).
Adam, lr halved every ``--halve-every`` epochs (an epoch = ``--epoch-size`` samples). Checkpoints every
``--save-every`` steps to ``OUT/checkpoint.pt`` (resumable with ``--resume``), JSON log lines in ``OUT/log.jsonl``
(per step: loss, lr, samples, elapsed s, data_s = how long the step waited for its batch, net_s = how long its
forward/backward/Adam took to run, on the CPU, or to queue, on a GPU; written every LOG_EVERY steps),
final weights exported to ``OUT/weights.safetensors`` (and every ``--keep-every`` steps to ``OUT/snapshots/`` for
weight averaging, see train.ship). Multi-process: ``torchrun --nproc-per-node N train.py ...``
(DDP, gloo on CPU / nccl on CUDA).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..core.constants import LID_PAIRS, POS_SCALE, WEIGHT_PRESETS
from ..core.layout import load_layout
from ..core.network import ResFCN256, count_parameters, cpu_bf16
from ..core.paths import SharedDataMissing, shared_file
from ..core.weights import save_weights
from ..synth.ict import ICT_NPZ
from ..synth.sampler import YAW_UNIFORM
from ..synth.uvmap import LAYOUT_NAME
from .data import SCENE_FEATURES, SyntheticStream, generator_name

PRESETS = {  # name -> (region weights, lr)
    "paper": ("paper", 1e-4), "paper-neck": ("paper-neck", 1e-4), "uniform": ("uniform", 1e-4),
    "no-neck": ("no-neck", 1e-4),
    "study-1-1-1": ("no-neck", 2e-4), "study-3-2-1": ("study-3-2-1", 2e-4), "study-10-3-2": ("study-10-3-2", 2e-4),
}


LOSSES = {"mse": "weighted position-map MSE", "euclid": "weighted position-map distance"}   # --loss: what it is
DEFAULT_LOSS = "mse"     # runs and weights from before --loss existed trained with it; weights record only others
EUCLID_EPS = 1e-8    # added under the square root: a finite gradient at zero error (1e-4 = 0.03 crop pixels)
LOG_EVERY = 25       # steps per host sync: the log's losses are read then (and at saves and the last step), and a
#                      multi-process --max-time run agrees on the deadline; in between the loop never waits on a GPU


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                  kind: str = DEFAULT_LOSS) -> torch.Tensor:
    """pred, target: (B,3,H,W) position maps normalized by POS_SCALE; weight (H,W). Mean over pixels of weight x
    the squared error (``mse``) or x the Euclidean distance (``euclid``) between the two 3D points of a pixel.
    The Euclidean form grows linearly with a point's error, as the NME that judges it does: a few badly hit
    pixels (occluded, extreme poses) weigh less against the many good ones than under the square."""
    sq = ((pred.float() - target) ** 2).sum(1)
    if kind == "euclid":
        return ((sq + EUCLID_EPS).sqrt() * weight).mean()
    if kind != "mse":
        raise ValueError(f"unknown loss {kind!r}; expected one of {tuple(LOSSES)}")
    return (sq * weight).mean()


def lid_loss(pred: torch.Tensor, target: torch.Tensor, kpt_xy: torch.Tensor) -> torch.Tensor:
    """pred, target: (B,3,H,W) position maps normalized by POS_SCALE; kpt_xy (68,2) long (x, y) UV pixels of the
    landmarks. Mean over the batch and LID_PAIRS of the squared error of the upper-to-lower lid vector (x, y, z).
    A blink moves the lid landmarks by a few pixels over a small patch of the map: under the region weights alone
    a network that always draws open eyes loses little; this term weighs the lids' opening itself."""
    flat = kpt_xy[:, 1] * pred.shape[-1] + kpt_xy[:, 0]
    up, lo = (flat[[pair[i] for pair in LID_PAIRS]] for i in (0, 1))
    p, t = pred.float().flatten(2), target.flatten(2)
    err = (p[:, :, up] - p[:, :, lo]) - (t[:, :, up] - t[:, :, lo])
    return (err ** 2).sum(1).mean()


@torch.no_grad()
def recalibrate_bn(model: ResFCN256, batches, amp_dtype=torch.bfloat16) -> None:
    """Replace BatchNorm running statistics by their exact average over ``batches`` (an iterable of image
    tensors) under the training forward: removes the lag of the exponential running averages. ``amp_dtype``
    autocasts on CUDA and on a CPU that runs bf16 natively (core.network.cpu_bf16); elsewhere float32."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.train()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                     # cumulative moving average
    dev = next(model.parameters()).device
    for img in batches:
        with torch.autocast(dev.type, dtype=amp_dtype,
                            enabled=amp_dtype is not None and (dev.type == "cuda" or cpu_bf16())):
            model(img.to(dev).contiguous(memory_format=torch.channels_last))
    for m, (mom, _) in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)


def set_training(model: torch.nn.Module, freeze_bn: bool = False) -> None:
    """Training mode; with ``freeze_bn`` the BatchNorm layers stay in eval mode: they normalize with their running
    statistics and do not update them, while their affine weights still get gradients."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def describe_hardware(dev: torch.device, world: int = 1) -> str:
    """What a run trains on, for the weights' metadata and the model card: the GPU's name, or the CPU and its
    torch threads; with the process count under DDP."""
    what = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads")
    return what + (f" x {world} processes" if world > 1 else "")


def build_argparser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (checkpoint, log, weights)")
    ap.add_argument("--width", type=int, default=None,
                    help="base channels: 16 = full PRN, 8 = half, 4 = quarter (default: the --init weights' or "
                         "the resumed run's width, else 16)")
    ap.add_argument("--steps", type=int, default=None,
                    help="stop at this step (default 1000; no step limit when --max-time is given)")
    ap.add_argument("--max-time", type=float, default=0,
                    help="also stop once this run's training has taken this many seconds (this invocation, "
                         "setup excluded), saving the weights and a snapshot of that step; for time-boxed machines. "
                         "0 = off")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="region weights (+ lr)")
    ap.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    ap.add_argument("--loss", choices=list(LOSSES), default=DEFAULT_LOSS,
                    help="per-pixel error under the region weights: squared (mse) or Euclidean distance (euclid)")
    ap.add_argument("--lid-weight", type=float, default=0.0, metavar="W",
                    help="add W x the squared error of the lids' opening (lid_loss: upper-to-lower lid landmark "
                         "vectors) to the loss, so that blinks weigh; 0 = off")
    ap.add_argument("--epoch-size", type=int, default=20000, help="samples per (virtual) epoch")
    ap.add_argument("--halve-every", type=float, default=5, help="halve lr every this many epochs")
    ap.add_argument("--schedule", choices=SCHEDULES, default="halve",
                    help="lr after the warm-up: halve (every --halve-every epochs) or cosine (from lr down to 0 "
                         "over the run: --steps, or --max-time for a time-boxed one, whichever ends it first)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="ramp the lr linearly from lr/N to lr over the run's first N steps: a fresh Adam state's "
                         "first steps are full lr-sized moves of every weight, which pulls a fine-tuned (--init) "
                         "model off its optimum; 0 = off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", type=int, default=0, help="serve each rendered batch 1+REUSE times, re-augmented")
    ap.add_argument("--max-yaw", type=float, default=90.0)
    ap.add_argument("--yaw-uniform", type=float, default=YAW_UNIFORM,
                    help="share of training scenes with yaw uniform over +-max-yaw (the rest: N(0, 25 deg))")
    ap.add_argument("--without", default="", metavar="F[,F...]",
                    help="switch off these training-scene features, to measure what they do: "
                         + ", ".join(f"{k} = {v}" for k, v in SCENE_FEATURES.items()))
    ap.add_argument("--context-blur", type=float, default=0.0, metavar="P",
                    help="blur the surround of this share of the training scenes (outside the face's landmark hull; "
                         "sampler.blur_context): a real photo's context then misleads less")
    ap.add_argument("--detail", action="store_true",
                    help="dress the training scenes with hair strands, skin mottling and full beards "
                         "(sampler.sample_detail; the scenes are otherwise the same)")
    ap.add_argument("--photo-backgrounds", type=float, default=0.0, metavar="P",
                    help="put a real photo behind the face in this share of the training scenes instead of a "
                         "procedural background: views of Blender's CC0 world panoramas and crops of scikit-image's "
                         "free photos (synth.photos; the scenes are otherwise the same)")
    ap.add_argument("--jpeg", type=float, default=0.0, metavar="P",
                    help="JPEG-code this share of the training scenes (sampler.compress: quality 30-95, coded at "
                         "96-352 px, 4:2:0 chroma), as real photos and video frames are (the scenes are otherwise "
                         "the same)")
    ap.add_argument("--body", type=float, default=0.0, metavar="P",
                    help="draw a clothed torso under this share of the training faces, turned less than the head, "
                         "the neck turning between the two, as in real photos (sampler.sample_body; the scenes are "
                         "otherwise the same)")
    ap.add_argument("--shadows", type=float, default=0.0, metavar="P",
                    help="give this share of the training scenes cast shadows of the key light: the nose's on the "
                         "cheek, the brows' in the eye sockets, the jaw's on the neck (sampler.sample_shadows; the "
                         "scenes are otherwise the same)")
    ap.add_argument("--freeze-bn", action="store_true",
                    help="BatchNorm layers keep and use their running statistics (their affine weights still "
                         "train): for fine-tuning at small batches, whose batch statistics are noisy")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                    help="autocast; auto: fp16 on CUDA, bf16 on a CPU that runs it natively "
                         "(core.network.cpu_bf16), else off")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--keep-every", type=int, default=0,
                    help="also keep the weights of every Nth step (a multiple of --save-every) in OUT/snapshots/, "
                         "for weight averaging at ship time (train.ship --average-from); 0 = off")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--init", help="initialize from a weights file (fine-tuning)")
    ap.add_argument("--shared", help="development data folder (default $PRN_BLENDER_SHARED or ../shared)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--render-batches", type=int, default=1, metavar="K",
                    help="render and augment K batches at once, then train on them one by one: on a GPU the data "
                         "engine is launch-bound and a K times larger pass costs far less than K passes "
                         "(tools/gpu_train.sh uses 4); 1 = one batch at a time")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    """train.py's arguments; ``steps`` None = no step limit (a --max-time run without --steps); ``lr`` the
    preset's unless given."""
    ap = build_argparser()
    a = ap.parse_args(argv)
    if a.render_batches < 1:
        ap.error(f"--render-batches {a.render_batches}: give a number of batches >= 1")
    if a.lid_weight < 0:
        ap.error(f"--lid-weight {a.lid_weight:g}: give a weight >= 0 (0 = off)")
    if a.max_time < 0:
        ap.error(f"--max-time {a.max_time:g}: give seconds > 0 (0 = off)")
    if a.steps is None and not a.max_time:
        a.steps = 1000
    if not a.lr:
        a.lr = PRESETS[a.preset][1]
    return a


SCHEDULES = ("halve", "cosine")


def learning_rate(a: argparse.Namespace, step: int, samples: int, elapsed: float) -> float:
    """The lr of training step ``step`` (0-based) under train.py's arguments ``a``, ``samples`` images seen
    before it and ``elapsed`` s of this invocation's training: ``--schedule halve``: lr x 0.5^floor(epoch /
    halve_every); ``cosine``: lr x (1 + cos(pi p)) / 2, p the share of the run done: step / steps or elapsed /
    max_time, whichever is larger (a time-boxed run anneals to 0 at its deadline, whatever the machine's speed).
    Times the linear warm-up over the first ``warmup`` steps."""
    lr = a.lr
    if a.schedule == "cosine":
        p = max(step / a.steps if a.steps else 0.0, elapsed / a.max_time if a.max_time else 0.0)
        lr *= 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    else:
        lr *= 0.5 ** math.floor(samples / a.epoch_size / a.halve_every)
    if step < a.warmup:
        lr *= (step + 1) / a.warmup
    return lr


def expected_last_step(a: argparse.Namespace, step: int, first: int, elapsed: float) -> int | None:
    """The step a run will end at, for the progress bar's total and ETA: ``--steps``, or where a time-boxed run
    (``--max-time``) reaches its deadline at the pace so far (``step - first`` steps in ``elapsed`` s of this
    invocation), whichever comes first; never before ``step``. None while a time box alone bounds the run and no
    step has been timed yet."""
    end = a.steps
    if a.max_time and step > first:
        at_pace = step + int(max(a.max_time - elapsed, 0.0) * (step - first) / max(elapsed, 1e-9))
        end = at_pace if end is None else min(end, at_pace)
    return None if end is None else max(end, step)


def resolve_width(asked: int | None, init: str | None, resumed: int | None) -> int:
    """The run's network width: ``resumed`` (the width of the run being resumed, None for a new run), else the
    --init weights', else 16; a --width that contradicts either is refused (SystemExit) before anything is
    written."""
    hint = ""
    if resumed is not None:
        have, what = resumed, "this run"
    elif init:
        from ..core.weights import WeightsError, read_metadata
        try:
            have, what = int(read_metadata(init)["width"]), f"--init {Path(init).name}"
        except WeightsError as e:
            raise SystemExit(f"--init: {e}") from None
        if asked is not None and asked > have:
            hint = "; widen it first (python -m prn_blender.train.widen)"
    else:
        return asked or 16
    if asked not in (None, have):
        raise SystemExit(f"--width {asked}: {what} has width {have}; leave --width out to keep it{hint}")
    return have


def main(argv=None) -> int:
    a = parse_args(argv)
    # arguments are checked before anything is written
    without = sorted({f for f in a.without.split(",") if f})
    for flag, prob in (("--context-blur", a.context_blur), ("--photo-backgrounds", a.photo_backgrounds),
                       ("--jpeg", a.jpeg), ("--body", a.body), ("--shadows", a.shadows)):
        if not 0 <= prob <= 1:
            raise SystemExit(f"{flag} {prob}: give a probability in [0, 1]")
    try:
        generator = generator_name(without, a.context_blur, a.detail, a.photo_backgrounds, a.jpeg, a.body,
                                   a.shadows)
    except ValueError as e:
        raise SystemExit(f"--without: {e}") from None
    if a.keep_every and a.keep_every % a.save_every:
        raise SystemExit(f"--keep-every {a.keep_every} is not a multiple of --save-every {a.save_every}")
    out = Path(a.out)
    ck = out / "checkpoint.pt"
    # read once: its arguments fix the width before the model is built, its tensors are loaded below
    state = torch.load(ck, map_location="cpu", weights_only=False) if a.resume and ck.exists() else None
    a.width = resolve_width(a.width, a.init, state["args"]["width"] if state else None)
    try:
        shared_file(ICT_NPZ, a.shared)              # the face model the scenes are rendered from
    except SharedDataMissing as e:
        raise SystemExit(f"error: {e}") from None
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    if ddp:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)
    else:
        rank, world = 0, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True       # fixed input shapes: pick the fastest convolution kernels
    torch.manual_seed(a.seed)
    out.mkdir(parents=True, exist_ok=True)
    if a.keep_every:
        (out / "snapshots").mkdir(exist_ok=True)
    layout = load_layout(LAYOUT_NAME)
    regions, lr = PRESETS[a.preset][0], a.lr
    weight = torch.from_numpy(layout.weight_mask(regions)).to(dev)
    kpt_xy = torch.from_numpy(layout.kpt_xy.astype("int64")).to(dev)
    # channels_last: x1.24 faster training steps than NCHW on this 2-core CPU (width 8 and 16, batch 8, bf16;
    # benchmarks/bench_core.py)
    model = ResFCN256(a.width).to(dev)
    parent = None         # what a fine-tuning run started from: its card adds the parent's training to its own
    if a.init:
        from ..core.weights import load_model, sha256
        init_model, _, init_md = load_model(a.init)
        model.load_state_dict(init_model.state_dict())
        pm = init_md["meta"]
        parent = {"file": Path(a.init).name, "sha256": sha256(a.init), "steps": int(pm.get("steps", 0)),
                  "images_seen": int(pm.get("images_seen", 0)), "wall_time_s": float(pm.get("wall_time_s", 0)),
                  "preset_history": pm.get("preset_history", pm.get("preset", "")),
                  "averaged": pm.get("averaged", ""), "widened": pm.get("widened", ""), "parent": pm.get("parent")}
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, t_start, samples = 0, time.time(), 0
    history = [[0, a.preset, generator]]   # [first step, preset, generator]: a resumed run may switch
    if state is not None:
        for flag, key, default in (("--loss", "loss", DEFAULT_LOSS), ("--lid-weight", "lid_weight", 0.0)):
            trained, asked = state["args"].get(key, default), getattr(a, key)
            if trained != asked:                       # the weights record one loss for the whole run
                raise SystemExit(f"{flag} {asked}: this run trained with {flag} {trained}; "
                                 "to switch, start a new run from its weights (--init)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, samples = state["step"], state["samples"]
        t_start -= state.get("elapsed", 0.0)
        old_parent = state.get("parent")
        if old_parent and not (parent and parent["sha256"] == old_parent["sha256"]):
            parent = old_parent           # the run's own record, unless --init names that same file again
        # runs from before the generator was recorded used ictsynth-1
        history = [h if len(h) == 3 else [*h, "ictsynth-1"]
                   for h in state.get("preset_history") or [[0, state["args"]["preset"]]]]
        if history[-1][1:] != [a.preset, generator]:
            history.append([step, a.preset, generator])
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    amp = a.amp if a.amp != "auto" else ("fp16" if dev.type == "cuda" else "bf16" if cpu_bf16() else "off")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and dev.type == "cuda" else None
    data = SyntheticStream(a.batch, seed=a.seed + 7919 * step, rank=rank, device=dev, reuse=a.reuse,
                           max_yaw=a.max_yaw, shared=a.shared, yaw_uniform=a.yaw_uniform, without=without,
                           context_blur=a.context_blur, render_batches=a.render_batches, detail=a.detail,
                           photo_backgrounds=a.photo_backgrounds, jpeg=a.jpeg, body=a.body, shadows=a.shadows)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    bar = None
    if rank == 0 and not a.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=a.steps, initial=step, dynamic_ncols=True)
    if rank == 0:
        print(f"ResFCN256 width {a.width}: {count_parameters(model):,} params; device {dev}; amp {amp}; "
              f"world {world}; preset {a.preset} lr {lr}", flush=True)
    set_training(model, a.freeze_bn)
    t_data = t_net = 0.0
    hardware = describe_hardware(dev, world)
    pending = []    # log records whose loss is still a device tensor: read in one host sync per LOG_EVERY steps
    t_run, first_step = time.time(), step
    while a.steps is None or step < a.steps:
        t0 = time.time()
        img, pos = next(data)
        img = img.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        target = pos.to(dev).contiguous() / POS_SCALE
        t1 = time.time()
        cur_lr = learning_rate(a, step, samples, t0 - t_run)
        for gparam in opt.param_groups:
            gparam["lr"] = cur_lr
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = net(img)
        loss = weighted_loss(pred, target, weight, a.loss)
        if a.lid_weight:
            loss = loss + a.lid_weight * lid_loss(pred, target, kpt_xy)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        step += 1
        samples += a.batch * world
        t2 = time.time()
        t_data += t1 - t0
        t_net += t2 - t1
        timeup = bool(a.max_time) and time.time() - t_run >= a.max_time
        if ddp and a.max_time:        # every rank stops at the same step: the deadline is agreed every LOG_EVERY
            if step % LOG_EVERY:
                timeup = False
            else:
                flag = torch.tensor([float(timeup)], device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                timeup = bool(flag.item())
        last = step == a.steps or timeup
        if rank == 0:
            pending.append({"step": step, "loss": loss.detach(), "lr": cur_lr, "samples": samples,
                            "elapsed": round(time.time() - t_start, 2), "data_s": round(t1 - t0, 4),
                            "net_s": round(t2 - t1, 4)})
            if bar is not None:
                bar.update(1)
            if step % LOG_EVERY == 0 or step % a.save_every == 0 or last:
                for rec, value in zip(pending, torch.stack([r["loss"] for r in pending]).tolist()):
                    rec["loss"] = value
                    log.write(json.dumps(rec) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.5f}", lr=f"{cur_lr:.1e}", refresh=False)
                    bar.total = expected_last_step(a, step, first_step, time.time() - t_run)
                    bar.refresh()
                pending.clear()
            if step % a.save_every == 0 or last:
                log.flush()
                tmp = ck.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                            "samples": samples, "elapsed": time.time() - t_start, "args": vars(a),
                            "preset_history": history, "parent": parent}, tmp)
                os.replace(tmp, ck)
                meta = {"data": "ICT-FaceKit synthetic (MIT)", "generator": generator, "seed": a.seed,
                        "width": a.width, "steps": step, "images_seen": samples, "batch": a.batch * world,
                        "preset": a.preset,
                        "preset_history": ", ".join(f"{n} ({gen}) from step {s0}" for s0, n, gen in history),
                        "lr": lr, **({"warmup": a.warmup} if a.warmup else {}),
                        **({"schedule": a.schedule} if a.schedule != "halve" else {}),
                        **({"max_time": a.max_time} if a.max_time else {}), "device": str(dev), "amp": amp,
                        "hardware": hardware, "reuse": a.reuse, "epoch_size": a.epoch_size,
                        **({"render_batches": a.render_batches} if a.render_batches > 1 else {}),
                        **({"yaw_uniform": a.yaw_uniform} if a.yaw_uniform != YAW_UNIFORM else {}),
                        **({"loss": a.loss} if a.loss != DEFAULT_LOSS else {}),
                        **({"lid_weight": a.lid_weight} if a.lid_weight else {}),
                        **({"bn_frozen": True} if a.freeze_bn else {}),
                        "wall_time_s": round(time.time() - t_start, 1), **({"parent": parent} if parent else {})}
                save_weights(model, out / "weights.safetensors", LAYOUT_NAME, meta)
                if a.keep_every and (step % a.keep_every == 0 or last):
                    shutil.copyfile(out / "weights.safetensors", out / "snapshots" / f"weights_{step:06d}.safetensors")
        if last:
            break
    if bar is not None:
        bar.close()
    if rank == 0:
        print(f"done: {step} steps, {samples} samples, data {t_data:.1f}s net {t_net:.1f}s -> "
              f"{out / 'weights.safetensors'}", flush=True)
        log.close()
    if ddp:
        dist.barrier()                 # no rank tears the group down while rank 0 still writes its files
        dist.destroy_process_group()
    return 0


WEIGHT_PRESET_NAMES = tuple(WEIGHT_PRESETS)
