"""Model soup: the uniform mean of fine-tuned weights that share an ancestor (Wortsman et al. 2022, "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing inference time").

    python -m prn_blender.train.soup --out runs/soup/weights.safetensors A.safetensors B.safetensors [...]

Fine-tunes of one model stay in one basin of the loss, where their mean is a model too (two unrelated networks
are not: their channels are permuted against each other, so the mean of unrelated weights is refused). Each
fine-tune trades some real-photo sources against others (stops 28-29); the mean keeps what they share. BatchNorm
statistics are recalibrated on fresh synthetic batches of the first ingredient's generator after averaging
(--bn-batches 0: the mean of the ingredients' statistics), unless every ingredient has the same statistics
(fine-tunes with BatchNorm frozen, train.py --freeze-bn): those are kept, the statistics all of them ran with. The
output records its ingredients (file, sha256, training) in its metadata, ``meta["soup"]``, and the first
ingredient's lineage as its ``parent``.
Soups of the shipped file with its fine-tunes, pseudo real set (the shipped file 3.002 %): with the two dressed
stop-33 fine-tunes 2.975, with all three stop-33 fine-tunes 2.988, with five from stops 31 and 33 3.007 (stops
33-34); none gained the 0.03 points a new default needs. Stop 35, two CPU fine-tunes of the shipped file with
BatchNorm frozen (so their statistics are the shipped file's): the soup of the shipped file with one of them 3.030
recalibrated vs 3.000 with --bn-batches 0, with both 3.047 vs 2.996: for ingredients that never changed their
statistics, recalibration only adds its own sampling noise (stop 34: 0.03 points between two seeds).
Stop 40, four soups of 4 or 5 of the stop-36 model and four of its frozen-BN photo-background fine-tunes (float16):
2.908-2.931 against the shipped 2.921 (itself such a soup): soups of one recipe's fine-tunes level off there.
The soup is written in float32 (the exact mean); --fp16 writes the float16 tensors train.ship writes for it, so a
candidate is validated as it would ship: the stop-38 soup measured 2.9151 on the pseudo set in float32 and 2.9207 as
the shipped float16 file (stop 39), enough to tilt a gate of 0.03.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..core.weights import SHIPPED_DTYPE, WeightsError, load_model, save_weights, sha256
from .data import run_stream
from .loop import recalibrate_bn

#: BatchNorm recalibration batches (of 16) after averaging weights whose statistics differ (soup ingredients, a
#: run's snapshots: ship --average-from)
BN_BATCHES = 24
#: the training record kept per ingredient (its own lineage stays in its file)
INGREDIENT_KEYS = ("steps", "images_seen", "wall_time_s", "generator", "preset_history", "averaged", "hardware",
                   "seed", "batch", "lr")


def lineage(meta: dict, own: str | None = None) -> list[str]:
    """The sha256 of a weights file (``own``) and of every model it was fine-tuned from, newest first."""
    out = [own] if own else []
    p = meta.get("parent")
    while p:
        out.append(p["sha256"])
        p = p.get("parent")
    return out


def common_ancestor(chains: list[list[str]]) -> str | None:
    """The newest sha256 every chain holds (one ingredient may be the ancestor of the others), else None."""
    shared = set(chains[0]).intersection(*chains[1:])
    return next((s for s in chains[0] if s in shared), None)


def mean_state(named_states) -> dict:
    """The mean (accumulated in float64, returned as float32) of the floating tensors of state dicts given as
    (name, state dict) pairs, one at a time: only the running sum is held (snapshot averaging reads its files
    lazily). Raises ValueError naming a state dict whose tensors differ from the first's."""
    acc, n = None, 0
    for name, sd in named_states:
        sd = {k: v for k, v in sd.items() if v.is_floating_point()}
        if acc is None:
            acc, first = {k: v.double() for k, v in sd.items()}, name
        elif sd.keys() != acc.keys():
            raise ValueError(f"{name} has other tensors than {first}")
        else:
            for k, v in sd.items():
                acc[k] += v.double()
        n += 1
    if not n:
        raise ValueError("no state dicts to average")
    return {k: (v / n).float() for k, v in acc.items()}


def make_soup(paths: list[str | Path]) -> tuple[torch.nn.Module, str, dict]:
    """(the mean model, its layout name, its metadata) of the weights files ``paths`` (>= 2, one width and layout,
    one common ancestor). Floating tensors are averaged in float64 (mean_state)."""
    if len(paths) < 2:
        raise WeightsError("a soup needs at least two weights files")
    models, chains, ingredients = [], [], []
    for p in paths:
        model, lay, md = load_model(p)
        digest = sha256(p)
        if models and (model.width, lay.name) != (models[0][0].width, models[0][1]):
            raise WeightsError(f"{Path(p).name}: width {model.width}, layout {lay.name}; the first ingredient has "
                               f"width {models[0][0].width}, layout {models[0][1]}")
        models.append((model, lay.name, md["meta"]))
        chains.append(lineage(md["meta"], digest))
        ingredients.append({"file": Path(p).as_posix(), "sha256": digest,                # as given: a run's path
                            **{k: md["meta"][k] for k in INGREDIENT_KEYS if k in md["meta"]}})
    if len({i["sha256"] for i in ingredients}) < len(ingredients):
        raise WeightsError("the same weights were given twice")
    ancestor = common_ancestor(chains)
    if ancestor is None:
        raise WeightsError("these weights share no ancestor (no sha256 in every file's fine-tuning lineage): their "
                           "mean is not a model")
    stats = [{k: v for k, v in m.state_dict().items() if k.endswith(("running_mean", "running_var"))}
             for m, _, _ in models]
    shared_bn = all(torch.equal(st[k], stats[0][k]) for st in stats[1:] for k in stats[0])
    soup = models[0][0]
    soup.load_state_dict(mean_state((p, m.state_dict()) for p, (m, _, _) in zip(paths, models)), strict=False)
    first = models[0][2]
    meta = {k: first[k] for k in ("data", "generator", "width", "yaw_uniform", "inference_zoom") if k in first}
    meta.update({"soup": ingredients, "soup_ancestor": ancestor, "parent": first.get("parent"),
                 "bn_shared": shared_bn,               # every ingredient ran with the same BatchNorm statistics
                 # a fine-tune of the soup (train.py --init) records these as its parent's training
                 "steps": sum(int(i.get("steps", 0)) for i in ingredients),
                 # the newest synthetic stream of the ingredients: a continuation (tools/gpu_train.sh: seed + 1)
                 # draws a new one
                 **({"seed": max(int(i["seed"]) for i in ingredients if "seed" in i)}
                    if any("seed" in i for i in ingredients) else {}),
                 "images_seen": sum(int(i.get("images_seen", 0)) for i in ingredients),
                 "wall_time_s": sum(float(i.get("wall_time_s", 0)) for i in ingredients),
                 "preset_history": f"the mean (model soup) of {len(ingredients)} fine-tunes: "
                                   + "; ".join(f"{i['file']} {i['sha256'][:8]}, {i.get('preset_history', '?')}"
                                               for i in ingredients)})
    return soup.eval(), models[0][1], meta


def default_bn_batches(meta: dict) -> int:
    """The recalibration batches a soup with metadata ``meta`` gets without --bn-batches: none when every ingredient
    ran with the same BatchNorm statistics (make_soup's ``bn_shared``), else BN_BATCHES."""
    return 0 if meta.get("bn_shared") else BN_BATCHES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", help="the ingredients: weights files fine-tuned from one model")
    ap.add_argument("--out", required=True, help="the soup's weights file")
    ap.add_argument("--bn-batches", type=int,
                    help="recalibrate BatchNorm statistics on this many fresh synthetic batches of 16 of the first "
                         "ingredient's generator (0 = keep the mean of the ingredients' statistics; default "
                         f"{BN_BATCHES}, or 0 when every ingredient has the same statistics)")
    ap.add_argument("--shared", help="development data folder (for the BatchNorm recalibration batches)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--fp16", action="store_true",
                    help="write float16 tensors, as train.ship writes the shipped file, so a candidate is validated "
                         "with the very tensors it would ship with (default float32: the exact mean)")
    a = ap.parse_args(argv)
    if a.bn_batches is not None and a.bn_batches < 0:
        ap.error(f"--bn-batches {a.bn_batches}: give 0 or more")
    out = Path(a.out)
    if out.resolve() in {Path(p).resolve() for p in a.weights}:
        ap.error(f"--out {out} is one of the ingredients")
    try:
        model, layout, meta = make_soup(a.weights)
    except WeightsError as e:
        raise SystemExit(f"soup: {e}") from None
    n_bn = a.bn_batches if a.bn_batches is not None else default_bn_batches(meta)
    if n_bn:
        stream = run_stream(meta, 16, 424242, shared=a.shared, device=a.device)
        recalibrate_bn(model.to(a.device), (next(stream)[0] for _ in range(n_bn)))
        model.cpu().eval()
        meta["bn_recalibrated_batches"] = n_bn
    save_weights(model, out, layout, meta, dtype=SHIPPED_DTYPE if a.fp16 else torch.float32)
    print(f"{out}: mean of {len(a.weights)} ({', '.join(i['sha256'][:8] for i in meta['soup'])}), common "
          f"ancestor {meta['soup_ancestor'][:12]}, sha256 {sha256(out)[:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
