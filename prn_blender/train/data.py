"""On-the-fly synthetic training batches (render -> face-metered exposure -> another person's head in the background
-> paper augmentation of the head layer over the background -> black crop border -> occlude -> restyle -> degrade);
scenes get environment lighting (sampler.sample_lighting) and the yaw-aware hair locks and glasses of
accessories.draw.

``SyntheticStream`` renders fresh batches and keeps a small replay pool: with ``reuse`` > 0 a rendered batch is
served ``1 + reuse`` times, each time with new occlusion/degradation/augmentation (cheap), which keeps a slow CPU
busy training instead of rendering. Deterministic for a given seed and rank.
"""
from __future__ import annotations

import torch

from ..synth.ict import load_ict
from ..synth.render import FaceRenderer
from ..synth.sampler import (YAW_UNIFORM, augment, black_border, degrade, distract, expose, occlude, restyle,
                             sample_lighting, sample_params)


class SyntheticStream:
    def __init__(self, batch: int, seed: int = 0, rank: int = 0, device="cpu", reuse: int = 0,
                 max_yaw: float = 90.0, shared=None, augment_on: bool = True, density: float = 40.0,
                 yaw_uniform: float = YAW_UNIFORM):
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
        p.update(sample_lighting(B, self.g, self.device),
                 yaw_aware=torch.ones(B, dtype=torch.bool, device=self.device))
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
        g = self.gi
        layer = expose(b.layer, b.pos, g)
        img, pos = augment(b.image, b.pos, g, layer=layer, background=distract(b.background, layer, g))
        return degrade(restyle(occlude(black_border(img, g), g), g), g), pos
