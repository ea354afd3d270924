"""On-the-fly synthetic training batches (render -> face-metered exposure -> another person's head in the background
-> paper augmentation of the head layer over the background -> black crop border -> occlude -> degrade);
scenes get environment lighting (sampler.sample_lighting) and the yaw-aware hair locks and glasses of
accessories.draw.

``SyntheticStream`` renders fresh batches and keeps a small replay pool: with ``reuse`` > 0 a rendered batch is
served ``1 + reuse`` times, each time with new occlusion/degradation/augmentation (cheap), which keeps a slow CPU
busy training instead of rendering. Deterministic for a given seed and rank.
"""
from __future__ import annotations

import torch

from ..synth.ict import load_ict
from ..synth.render import GENERATOR_VERSION, FaceRenderer
from ..synth.sampler import (YAW_UNIFORM, augment, black_border, degrade, distract, expose, occlude, sample_lighting,
                             sample_params)

# What generators 7-10 added to the training scenes, by name: ``train.py --without NAME`` switches one off to measure
# what it does to the model, and the run records the generator as ``generator_name(without)``. Features removed
# from the generator since are always off: RETIRED_FEATURES.
SCENE_FEATURES = {
    "exposure": "face-metered auto exposure (ictsynth-7)",
    "sh": "spherical-harmonic environment lighting (ictsynth-7)",
    "yaw-aware": "glasses beyond 50 deg yaw and no hair lock over the hidden jaw (ictsynth-8, -9)",
    "distract": "another person's head behind the subject (ictsynth-10)",
}
RETIRED_FEATURES = {"restyle": "saturation, unsharp masking and random convolution (ictsynth-7 to -10)"}


def generator_name(without=()) -> str:
    """The training data's generator: GENERATOR_VERSION, or e.g. "ictsynth-11 without distract+sh"."""
    unknown = set(without) - set(SCENE_FEATURES)
    if unknown:
        raise ValueError(f"unknown scene features {sorted(unknown)}; known: {', '.join(SCENE_FEATURES)}")
    return GENERATOR_VERSION + (f" without {'+'.join(sorted(without))}" if without else "")


def without_of(generator: str) -> list[str]:
    """The scene features a generator name says were off (the inverse of generator_name), less the retired ones
    (the generator no longer has them: off anyway)."""
    named = generator.partition(" without ")[2].split("+") if " without " in generator else []
    return [f for f in named if f not in RETIRED_FEATURES]


class SyntheticStream:
    def __init__(self, batch: int, seed: int = 0, rank: int = 0, device="cpu", reuse: int = 0,
                 max_yaw: float = 90.0, shared=None, augment_on: bool = True, density: float = 40.0,
                 yaw_uniform: float = YAW_UNIFORM, without=()):
        generator_name(without)                                   # validates the names
        self.without = frozenset(without)
        self.ict = load_ict(shared=shared)
        self.renderer = FaceRenderer(self.ict, device=device, density=density)
        self.batch, self.reuse, self.max_yaw, self.augment_on = batch, reuse, max_yaw, augment_on
        self.yaw_uniform = yaw_uniform
        self.g = torch.Generator().manual_seed(seed * 1000 + rank)     # scene parameters (small, CPU)
        # image-space randomness (backgrounds, augmentation, occluders, noise) on the data's device; on the CPU
        # the one generator serves both, so a seed's batches do not depend on this split
        dev = torch.device(device)
        self.gi = self.g if dev.type == "cpu" else torch.Generator(dev).manual_seed(seed * 1000 + rank)
        self.device = device
        self._cache, self._left = None, 0

    def render(self, n: int | None = None):
        B = n or self.batch
        p = sample_params(B, self.ict.expression_names, self.g, self.device, self.max_yaw, image_g=self.gi,
                          yaw_uniform=self.yaw_uniform)
        if "sh" not in self.without:
            p.update(sample_lighting(B, self.g, self.device))
        if "yaw-aware" not in self.without:
            p["yaw_aware"] = torch.ones(B, dtype=torch.bool, device=self.device)
        return self.renderer.render(p)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (B,3,256,256) in [0,1], position map (B,3,256,256) in crop pixels)."""
        if self._left <= 0:
            self._cache, self._left = self.render(), self.reuse + 1
        self._left -= 1
        b = self._cache
        if not self.augment_on:
            return b.image, b.pos
        g, off = self.gi, self.without
        layer = b.layer if "exposure" in off else expose(b.layer, b.pos, g)
        background = b.background if "distract" in off else distract(b.background, layer, g)
        img, pos = augment(b.image, b.pos, g, layer=layer, background=background)
        img = occlude(black_border(img, g), g)
        return degrade(img, g), pos


def run_stream(meta: dict, batch: int, seed: int, **kw) -> SyntheticStream:
    """A stream of the scenes a run trained on, from its weights' metadata: its scene features and yaw prior (for
    BatchNorm recalibration: the statistics are those of the run's own data)."""
    return SyntheticStream(batch, seed=seed, without=without_of(meta.get("generator", "")),
                           yaw_uniform=float(meta.get("yaw_uniform", YAW_UNIFORM)), **kw)
