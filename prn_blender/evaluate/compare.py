"""Is a model better than another on the same images, or is the difference noise? Paired bootstrap over eval.py's
per-image errors.

``python -m prn_blender.evaluate.compare BASE CAND [CAND ...] [--cap PCT] [--base-model NAME] [--sources S ...]``
reads the ``metrics.json`` of eval.py output folders made on the same images (one dataset, one crop) and prints, per
candidate, its summary NME2D, the difference to BASE's and that difference's paired-bootstrap interval (default
95 %), with the images it does better and worse on and the median per-image change. The summary is the one eval.py
reports: for ``--dataset pseudo`` the mean of the per-source means (``nme2d_mean_of_sources``: each source weighs the
same), for every other dataset the mean over images. A resample draws each source's images with replacement (as
many as it has) and evaluates both models on the same draw, so the interval is that of the *difference*: a
candidate is better beyond the set's noise when the interval's upper end is below 0. ``--cap PCT`` caps every
per-image error at PCT first (a face whose label or detection is wrong can err by 30-40 % and move a set's mean
more than a real change does). ``--sources`` keeps only the pseudo set's faces of those sources (a change tuned
or adapted on some sources is judged on the others). Stop 42, on the pseudo set against the shipped model: the nine
soups evaluated at stops 39-41 were -0.023 to +0.066 from it, each interval containing 0; capped at 10 %, -0.007
to +0.058.

Frames of one clip are not independent samples (the pseudo set's webcam and talking sources): the better / worse
counts per source say where a change comes from, not how sure it is, and within a clip the interval is optimistic.
Images a model missed (no face: a null per-image error) are left out of the comparison for both models; their
count is printed. Errors are in percent (NME2D, eval.py's normalizer).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import source_of

BOOT = 2000            # resamples
LEVEL = 0.95           # two-sided interval


@dataclass(frozen=True)
class Comparison:
    """A candidate against the base on the images both found a face in (NME2D, percent)."""
    base: float                 # the base's summary (mean of source means, or the mean)
    cand: float                 # the candidate's
    diff: float                 # cand - base (< 0: the candidate errs less)
    low: float                  # the paired-bootstrap interval of diff
    high: float
    n: int                      # images compared
    better: int                 # images with a lower error for the candidate
    worse: int                  # images with a higher one
    by_source: dict             # {source: (better, worse)} (one source "" without sources)
    median_change: float        # median per-image cand - base
    missed: int                 # images left out: one model or the other found no face


def load_per_image(path, model: str = "ours") -> tuple[str, dict[str, float | None]]:
    """(dataset, {image name: NME2D % or None}) of ``model`` in an eval.py output folder or metrics.json."""
    p = Path(path)
    p = p / "metrics.json" if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"{path}: no metrics.json (give an eval.py --out folder)")
    res = json.loads(p.read_text())
    models = res.get("models", {})
    if model not in models or "per_image" not in models[model]:
        raise ValueError(f"{path}: no per-image errors of model {model!r} (it has: {', '.join(models) or 'none'})")
    return res.get("dataset", ""), models[model]["per_image"]


def compare(base: dict, cand: dict, per_source: bool, cap: float | None = None, boot: int = BOOT, seed: int = 0,
            level: float = LEVEL, sources: tuple[str, ...] | None = None) -> Comparison:
    """Paired comparison of two {image name: NME2D % or None} maps over the same images. ``per_source``: the
    summary is the mean of the sources' means (a name's source: metrics.source_of), and resamples are drawn within each
    source; otherwise one group. ``cap``: per-image errors are capped at it first. ``sources``: only the images
    of these sources are compared (with ``per_source``)."""
    if sources is not None:
        if not per_source:
            raise ValueError("sources are the pseudo set's: --sources needs a --dataset pseudo run")
        missing = sorted(set(sources) - {source_of(k) for k in base})
        if missing:
            raise ValueError(f"no source {', '.join(missing)} in these runs")
        base, cand = ({k: v for k, v in x.items() if source_of(k) in sources} for x in (base, cand))
    if set(base) != set(cand):
        only = sorted(set(base) ^ set(cand))
        raise ValueError(f"the two evaluations have different images ({len(only)} in one only, e.g. {only[0]}): "
                         "compare runs of one dataset and crop")
    names = [k for k in base if base[k] is not None and cand[k] is not None]
    if not names:
        raise ValueError("no image with a face found by both models")
    a = np.array([base[k] for k in names], np.float64)
    b = np.array([cand[k] for k in names], np.float64)
    if cap is not None:
        a, b = np.minimum(a, cap), np.minimum(b, cap)
    keys = [source_of(k) if per_source else "" for k in names]
    srcs = list(dict.fromkeys(keys))
    groups = [np.flatnonzero(np.array(keys) == s) for s in srcs]
    rng = np.random.default_rng(seed)
    draws = [g[rng.integers(0, len(g), (boot, len(g)))] for g in groups]     # (boot, n_source) per source
    d = b - a
    diffs = np.mean([d[x].mean(1) for x in draws], axis=0)                      # (boot,)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    sa, sb = (float(np.mean([x[g].mean() for g in groups])) for x in (a, b))
    return Comparison(base=sa, cand=sb, diff=sb - sa, low=float(low), high=float(high), n=len(names),
                      better=int((d < 0).sum()), worse=int((d > 0).sum()),
                      by_source={s: (int((d[g] < 0).sum()), int((d[g] > 0).sum())) for s, g in zip(srcs, groups)},
                      median_change=float(np.median(d)),
                      missed=len(base) - len(names))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="eval.py --out folder (or its metrics.json) of the model to beat")
    ap.add_argument("candidates", nargs="+", help="eval.py --out folders of the candidates, same images")
    ap.add_argument("--model", default="ours", help="model name inside metrics.json (default: ours)")
    ap.add_argument("--base-model", help="the base's model name, if not --model (e.g. 3ddfa_v2_mb05: our model "
                                         "against the peer in one run's metrics.json, given as base and candidate)")
    ap.add_argument("--cap", type=float, help="cap every per-image NME2D at this many percent first")
    ap.add_argument("--boot", type=int, default=BOOT, help=f"bootstrap resamples (default {BOOT})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", nargs="+", help="pseudo set: compare only the faces of these sources")
    ap.add_argument("--level", type=float, default=LEVEL, help=f"interval coverage (default {LEVEL})")
    a = ap.parse_args(argv)
    if a.boot < 100 or not 0 < a.level < 1 or (a.cap is not None and a.cap <= 0):
        raise SystemExit("error: --boot >= 100, 0 < --level < 1 and --cap > 0")
    try:
        dataset, base = load_per_image(a.base, a.base_model or a.model)
        rows = []
        for c in a.candidates:
            ds, cand = load_per_image(c, a.model)
            if ds != dataset:
                raise ValueError(f"{c} is a {ds!r} evaluation, {a.base} a {dataset!r} one")
            rows.append((c, compare(base, cand, dataset == "pseudo", a.cap, a.boot, a.seed, a.level,
                                    tuple(a.sources) if a.sources else None)))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    what = ("mean of source means" + (f" of {', '.join(a.sources)}" if a.sources else "")
            if dataset == "pseudo" else "mean")
    against = f"{a.base}" + (f" ({a.base_model})" if a.base_model else "")
    print(f"NME2D % ({what}{f', per image capped at {a.cap:g} %' if a.cap else ''}) of {a.model} against {against}; "
          f"{a.level:.0%} paired-bootstrap interval of the difference, {a.boot} resamples\n")
    print("| candidate | base | candidate | difference | interval | images better / worse | by source | "
          "median change | missed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c, r in rows:
        sources = ", ".join(f"{s} {b}/{w}" for s, (b, w) in r.by_source.items()) if dataset == "pseudo" else "-"
        print(f"| {c} | {r.base:.4f} | {r.cand:.4f} | {r.diff:+.4f} | [{r.low:+.4f}, {r.high:+.4f}] | "
              f"{r.better} / {r.worse} of {r.n} | {sources} | {r.median_change:+.3f} | {r.missed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
