"""Expression response: how much of a face's expression the network's landmarks follow.

``python -m prn_blender.evaluate.expression_response --weights W [W ...]`` renders held-out synthetic faces
(ICT-FaceKit, yaw within --max-yaw) once neutral and once per probe expression at full strength, the rest of the
scene unchanged, and reconstructs each with the default photo inference, cropped from the true landmarks. Per probe,
a landmark measure in image pixels (eye aperture, mouth width, brow height, lip gap) is taken on the network's
landmarks and on the true ones, both read at the network's own layout pixels; the response is the network's change
of the measure over the truth's (1: follows the expression, 0: ignores it), averaged over the faces. NME barely
sees this: a network that always draws the average expression loses little landmark error, but its animation shows
no blinks.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..core.constants import LID_PAIRS


def eye_aperture(lm: np.ndarray) -> float:
    """Mean lid gap (pixels) of the iBUG-68 landmarks' four lid pairs."""
    return float(np.mean([np.linalg.norm(lm[a, :2] - lm[b, :2]) for a, b in LID_PAIRS]))


def mouth_width(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[48, :2] - lm[54, :2]))


def brow_height(lm: np.ndarray) -> float:
    """Mean height (pixels, image y down) of the brows over the eyes."""
    return float(lm[36:48, 1].mean() - lm[17:27, 1].mean())


def lip_gap(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[51, :2] - lm[57, :2]))


#: probe -> (expression weights, the measure it changes)
PROBES = {
    "blink": ({"eyeBlink_L": 1.0, "eyeBlink_R": 1.0}, eye_aperture),
    "smile": ({"mouthSmile_L": 1.0, "mouthSmile_R": 1.0}, mouth_width),
    "pucker": ({"mouthPucker": 1.0}, mouth_width),
    "brow raise": ({"browInnerUp_L": 1.0, "browInnerUp_R": 1.0, "browOuterUp_L": 1.0, "browOuterUp_R": 1.0},
                   brow_height),
    "jaw open": ({"jawOpen": 0.7}, lip_gap),
}
SEED_OFFSET = 20_000_000       # held out: disjoint from training streams and from eval's synthetic set


def probe_scenes(n_faces: int, seed: int = 0, max_yaw: float = 20.0, shared=None):
    """Yield, per face, (images (P+1,256,256,3) float RGB, true landmarks (P+1,68,3) in image pixels, the true
    position maps (P+1,256,256,3)): the face neutral, then with each of PROBES' expressions."""
    import torch

    from ..synth.ict import load_ict
    from ..synth.render import FaceRenderer
    from ..synth.sampler import sample_params
    ict = load_ict(shared=shared)
    r = FaceRenderer(ict)
    names = ict.expression_names
    g = torch.Generator().manual_seed(SEED_OFFSET + seed)
    P = len(PROBES)
    for _ in range(n_faces):
        p = sample_params(1, names, g, max_yaw=max_yaw)
        q = {k: v.expand(P + 1, *v.shape[1:]).clone() for k, v in p.items()}
        q["expression"] = torch.zeros(P + 1, len(names))
        for i, (weights, _) in enumerate(PROBES.values()):
            for n, w in weights.items():
                q["expression"][i + 1, names.index(n)] = w
        with torch.no_grad():
            out = r.render(q)
        yield (out.image.permute(0, 2, 3, 1).numpy().copy(), out.kpt.numpy(),
               out.pos.permute(0, 2, 3, 1).numpy().copy())


def responses(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Per probe, (measure(pred probe) - measure(pred neutral)) / (measure(true probe) - measure(true neutral))
    for landmarks (P+1,68,>=2) of one face: neutral first, then PROBES' order."""
    out = {}
    for i, (name, (_, f)) in enumerate(PROBES.items()):
        out[name] = (f(pred[i + 1]) - f(pred[0])) / (f(true[i + 1]) - f(true[0]))
    return out


def measure(predict, scenes, layout) -> dict[str, np.ndarray]:
    """(n_faces,) responses per probe over ``probe_scenes`` of ``predict(image, true landmarks) -> (68,>=2)
    landmarks``; the truth is read at ``layout``'s landmark pixels."""
    got: dict[str, list] = {k: [] for k in PROBES}
    for images, kpts, maps in scenes:
        pred = np.stack([predict(img, kp) for img, kp in zip(images, kpts)])
        true = np.stack([layout.landmarks(m) for m in maps])
        for k, v in responses(pred, true).items():
            got[k].append(v)
    return {k: np.asarray(v) for k, v in got.items()}


def response_table(weights=(None,), refiners=("none",), faces: int = 8, seed: int = 0, max_yaw: float = 20.0,
                   peer: bool = False, shared=None) -> list[str]:
    """The expression response as markdown lines (a title, then a table: a row per weights x refiner, and the
    3DDFA_V2 peer's with ``peer``); ``refiners``: files, 'default' (the shipped one, if any) or 'none' (off)."""
    from ..core.reconstruct import FaceReconstructor, InferenceOptions
    scenes = list(probe_scenes(faces, seed, max_yaw, shared))
    rows = []
    for w in weights:
        for r in refiners:
            rec = FaceReconstructor(weights=w, device="cpu", options=InferenceOptions(refine=r != "none"),
                                    refiner=None if r in ("default", "none") else r)
            lay = rec.predictor.layout           # the network's own landmark pixels, for it and the truth alike
            name = (w or "shipped") + ("" if len(refiners) == 1 and r == "none" else f", refiner {r}")
            rows.append((name, lambda img, kp, rec=rec, lay=lay:
                         lay.landmarks(rec(img, texture=False, landmarks=kp)[0].position_map), lay))
    if peer:
        from .run import PeerModel
        pm = PeerModel(shared)
        rows.append((pm.name, lambda img, kp: pm.predict(img, "gt", kp, None)[0], rows[0][2]))
    out = [(f"expression response (network change / true change), {faces} faces, yaw <= {max_yaw:g}, seed {seed}; "
            "default photo inference cropped from the true landmarks"), "",
           "| weights | " + " | ".join(PROBES) + " | mean of the first four |",
           "|---|" + "---|" * (len(PROBES) + 1)]
    for name, predict, lay in rows:
        means = [float(v.mean()) for v in measure(predict, scenes, lay).values()]
        out.append(f"| {name} | " + " | ".join(f"{m:+.2f}" for m in means) + f" | {np.mean(means[:4]):+.2f} |")
    return out


def main(argv=None) -> int:
    from ..cli_util import script_argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=[None], help="weights files (default: the shipped model)")
    ap.add_argument("--refiner", nargs="+", default=["none"],
                    help="refiners (core.refine) to run each weights with: files, 'default' (the shipped one, if "
                         "any) or 'none' (off, the default inference)")
    ap.add_argument("--faces", type=int, default=8, help="synthetic faces, each neutral and with every probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-yaw", type=float, default=20.0)
    ap.add_argument("--peer", action="store_true",
                    help="also the 3DDFA_V2 mb05 peer (cropped from the true landmarks as the peer crops)")
    ap.add_argument("--shared", help="development data folder (default: $PRN_BLENDER_SHARED or ../shared)")
    a = ap.parse_args(script_argv() if argv is None else argv)
    print("\n".join(response_table(a.weights, a.refiner, a.faces, a.seed, a.max_yaw, a.peer, a.shared)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
