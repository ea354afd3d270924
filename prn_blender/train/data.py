"""On-the-fly synthetic training batches (render -> face-metered exposure -> another person's head in the background
-> paper augmentation of the head layer over the background -> black crop border -> occlude -> degrade [-> a
blurred surround: ``context_blur``, off by default] [-> JPEG coding: ``jpeg``, off by default]); with ``detail``
(off by default) the scenes are dressed with hair strands, skin mottling and full beards (sampler.sample_detail);
with ``photo_backgrounds`` (off by default) that share of the scenes has a real photo behind the face instead of a
procedural background (synth.photos); with ``body`` (off by default) that share has a clothed torso under a neck
that turns between head and torso (sampler.sample_body); with ``shadows`` (off by default) that share has cast
shadows of the key light (sampler.sample_shadows); scenes get environment lighting (sampler.sample_lighting)
and the yaw-aware hair locks and glasses of accessories.draw.

``SyntheticStream`` renders fresh batches and keeps a small replay pool: with ``reuse`` > 0 a rendered batch is
served ``1 + reuse`` times, each time with new occlusion/degradation/augmentation (cheap), which keeps a slow CPU
busy training instead of rendering. With ``render_batches`` = K > 1 it renders and augments K batches at once and
serves them one by one: on a GPU the data engine is bound by kernel launches, not arithmetic, so one pass over 256
scenes costs far less than four over 64 (H200, stop 29: the data path made 3,146 samples/s at batch 256 against
1,330 at 64). Past batch 1,024 it saturates (stop 33: 3,883 samples/s at 1,024, 3,974 at 2,048; 4,096 runs out of
the H200's 139 GiB in the hole fill). Deterministic for a given seed, rank and ``render_batches``.

(A background thread making the batches ahead, train.py --prefetch in stops 22-28, was removed in stop 29: on the
H200 it trained 10,112 samples in 25 s against 17,536 inline; the data engine and the training step are both Python
launching small kernels and only take turns at the GIL.)

(torch.compile, stop 35, this 2-core CPU, 1 thread, inductor: accessories.draw rewritten as one static-shape
function, glasses drawn for every sample and masked, ran a chunk of 4 scenes in 34.3 ms against 33.5 eager, after
12 s of compilation: the 1D noise's grid_sample is lowered to per-pixel gathers there. With the noise left eager and
the glasses left out (not the same output), 33.6 ms against 48.8 with the other core busy: some 10 % of the data
path at best, for a compiler at run time and a second code path. Not used.)
"""
from __future__ import annotations

import torch

from ..synth.ict import load_ict
from ..synth.photos import PhotoBackgrounds
from ..synth.render import GENERATOR_VERSION, FaceRenderer
from ..synth.sampler import (
    YAW_UNIFORM,
    augment,
    black_border,
    blur_context,
    compress,
    degrade,
    distract,
    expose,
    occlude,
    sample_body,
    sample_detail,
    sample_lighting,
    sample_params,
    sample_shadows,
)

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


CONTEXT_BLUR = " with context-blur "   # generator-name suffix of train.py --context-blur P (off by default)
CONTEXT_BLUR_SEED = 104729               # the blur's generator: seed * 1000 + rank + this (its own stream, so a run
#                                          with the blur sees the same scenes as one without)
DETAIL = " with detail"                  # generator-name part of train.py --detail (off by default)
DETAIL_SEED = 1299709                    # sample_detail's generator: seed * 1000 + rank + this (as the blur's)
PHOTO_BACKGROUNDS = " with photo-backgrounds "   # generator-name part of train.py --photo-backgrounds P (off: default)
PHOTO_SEED = 15485863                    # the photo backgrounds' generator: seed * 1000 + rank + this (as the blur's)
JPEG = " with jpeg "                     # generator-name part of train.py --jpeg P (off by default)
JPEG_SEED = 32452843                     # sampler.compress's generator: seed * 1000 + rank + this (as the blur's)
BODY = " with body "                     # generator-name part of train.py --body P (off by default)
BODY_SEED = 49979687                     # sampler.sample_body's generator: seed * 1000 + rank + this (as the blur's)
SHADOWS = " with shadows "               # generator-name part of train.py --shadows P (off by default)
SHADOWS_SEED = 67867967                  # sampler.sample_shadows' generator: seed * 1000 + rank + this (as the blur's)


def generator_name(without=(), context_blur: float = 0.0, detail: bool = False,
                   photo_backgrounds: float = 0.0, jpeg: float = 0.0, body: float = 0.0, shadows: float = 0.0) -> str:
    """The training data's generator: GENERATOR_VERSION, or e.g. "ictsynth-11 without distract+sh", with
    " with detail" when the scenes were dressed by sampler.sample_detail, " with photo-backgrounds 0.5" when that
    share of the scenes had a photo behind the face (synth.photos), " with context-blur 0.5" when that share of
    the scenes had their surround blurred (sampler.blur_context), " with jpeg 0.5" when that share was JPEG-coded
    (sampler.compress), " with body 0.5" when that share had a torso under a turning neck (sampler.sample_body) and
    " with shadows 0.5" when that share had cast shadows (sampler.sample_shadows), in this order."""
    unknown = set(without) - set(SCENE_FEATURES)
    if unknown:
        raise ValueError(f"unknown scene features {sorted(unknown)}; known: {', '.join(SCENE_FEATURES)}")
    for what, prob in (("context blur", context_blur), ("photo backgrounds", photo_backgrounds), ("jpeg", jpeg),
                       ("body", body), ("shadows", shadows)):
        if not 0 <= prob <= 1:
            raise ValueError(f"{what} {prob}: a probability in [0, 1]")
    return (GENERATOR_VERSION + (f" without {'+'.join(sorted(without))}" if without else "")
            + (DETAIL if detail else "")
            + (f"{PHOTO_BACKGROUNDS}{photo_backgrounds:g}" if photo_backgrounds else "")
            + (f"{CONTEXT_BLUR}{context_blur:g}" if context_blur else "")
            + (f"{JPEG}{jpeg:g}" if jpeg else "")
            + (f"{BODY}{body:g}" if body else "")
            + (f"{SHADOWS}{shadows:g}" if shadows else ""))


def without_of(generator: str) -> list[str]:
    """The scene features a generator name says were off (the inverse of generator_name), less the retired ones
    (the generator no longer has them: off anyway)."""
    generator = generator.partition(" with ")[0]           # the " with ..." parts follow the " without ..." one
    named = generator.partition(" without ")[2].split("+") if " without " in generator else []
    return [f for f in named if f not in RETIRED_FEATURES]


def detail_of(generator: str) -> bool:
    """Whether a generator name says the scenes were dressed with sample_detail."""
    return DETAIL in generator


def _share_of(generator: str, part: str) -> float:
    """The number after ``part`` (e.g. " with jpeg ") in a generator name, 0 without that part."""
    return float(generator.partition(part)[2].partition(" ")[0] or 0)


def context_blur_of(generator: str) -> float:
    """The context-blur probability a generator name records (0 without one)."""
    return _share_of(generator, CONTEXT_BLUR)


def photo_backgrounds_of(generator: str) -> float:
    """The share of photo backgrounds a generator name records (0 without one)."""
    return _share_of(generator, PHOTO_BACKGROUNDS)


def jpeg_of(generator: str) -> float:
    """The share of JPEG-coded scenes a generator name records (0 without one)."""
    return _share_of(generator, JPEG)


def body_of(generator: str) -> float:
    """The share of scenes with a body (sampler.sample_body) a generator name records (0 without one)."""
    return _share_of(generator, BODY)


def shadows_of(generator: str) -> float:
    """The share of scenes with cast shadows (sampler.sample_shadows) a generator name records (0 without one)."""
    return _share_of(generator, SHADOWS)


class SyntheticStream:
    def __init__(self, batch: int, seed: int = 0, rank: int = 0, device="cpu", reuse: int = 0,
                 max_yaw: float = 90.0, shared=None, augment_on: bool = True, density: float = 40.0,
                 yaw_uniform: float = YAW_UNIFORM, without=(), context_blur: float = 0.0, render_batches: int = 1,
                 detail: bool = False, photo_backgrounds: float = 0.0, jpeg: float = 0.0, body: float = 0.0,
                 shadows: float = 0.0):
        generator_name(without, context_blur, detail, photo_backgrounds, jpeg, body, shadows)   # validates them
        if render_batches < 1:
            raise ValueError(f"render_batches {render_batches}: give a number of batches >= 1")
        self.render_batches = render_batches
        self.context_blur = context_blur
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
        self.gc = torch.Generator(dev).manual_seed(seed * 1000 + rank + CONTEXT_BLUR_SEED)
        self.detail = detail
        self.gd = torch.Generator().manual_seed(seed * 1000 + rank + DETAIL_SEED)
        self.photo_backgrounds = photo_backgrounds
        if photo_backgrounds:
            self.photos = PhotoBackgrounds(dev)
            self.gp = torch.Generator(dev).manual_seed(seed * 1000 + rank + PHOTO_SEED)
        self.jpeg = jpeg
        self.gj = torch.Generator(dev).manual_seed(seed * 1000 + rank + JPEG_SEED)
        self.body = body
        self.gb = torch.Generator().manual_seed(seed * 1000 + rank + BODY_SEED)
        self.shadows = shadows
        self.gs = torch.Generator().manual_seed(seed * 1000 + rank + SHADOWS_SEED)
        self._kpt = torch.from_numpy(self.renderer.layout.kpt_xy).long().to(dev)   # (68,2) landmark UV pixels (x,y)
        self.device = device
        self._cache, self._left, self._ready = None, 0, []

    def render(self, n: int | None = None):
        B = n or self.batch
        p = sample_params(B, self.ict.expression_names, self.g, self.device, self.max_yaw, image_g=self.gi,
                          yaw_uniform=self.yaw_uniform)
        if "sh" not in self.without:
            p.update(sample_lighting(B, self.g, self.device))
        if "yaw-aware" not in self.without:
            p["yaw_aware"] = torch.ones(B, dtype=torch.bool, device=self.device)
        if self.detail:
            p.update(sample_detail(B, self.gd, p["beard"], self.device))
        if self.photo_backgrounds:
            p["background"] = self.photos(p["background"], self.gp, self.photo_backgrounds)
        if self.body:
            p.update(sample_body(B, self.gb, self.device, self.body))
        if self.shadows:
            p.update(sample_shadows(B, self.gs, self.device, self.shadows))
        return self.renderer.render(p)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (B,3,256,256) in [0,1], position map (B,3,256,256) in crop pixels)."""
        if not self._ready:
            if self._left <= 0:
                self._cache, self._left = self.render(self.batch * self.render_batches), self.reuse + 1
            self._left -= 1
            img, pos = self._pass(self._cache)
            self._ready = list(zip(img.split(self.batch), pos.split(self.batch)))[::-1]
        return self._ready.pop()

    def _pass(self, b) -> tuple[torch.Tensor, torch.Tensor]:
        """One serving of the rendered scenes ``b``: augmented afresh (unless augment_on is off)."""
        if not self.augment_on:
            return b.image, b.pos
        g, off = self.gi, self.without
        layer = b.layer if "exposure" in off else expose(b.layer, b.pos, g)
        background = b.background if "distract" in off else distract(b.background, layer, g)
        img, pos = augment(b.image, b.pos, g, layer=layer, background=background)
        img = degrade(occlude(black_border(img, g), g), g)
        if self.context_blur:
            lm = pos[:, :2, self._kpt[:, 1], self._kpt[:, 0]].transpose(1, 2)     # (B,68,2) crop pixels
            img = blur_context(img, lm, self.gc, self.context_blur)
        if self.jpeg:
            img = compress(img, self.gj, self.jpeg)
        return img, pos


def run_stream(meta: dict, batch: int, seed: int, **kw) -> SyntheticStream:
    """A stream of the scenes a run trained on, from its weights' metadata: its scene features and yaw prior (for
    BatchNorm recalibration: the statistics are those of the run's own data), context blur, detail, photo
    backgrounds, JPEG coding, the body and cast shadows included."""
    generator = meta.get("generator", "")
    return SyntheticStream(batch, seed=seed, without=without_of(generator), context_blur=context_blur_of(generator),
                           detail=detail_of(generator), photo_backgrounds=photo_backgrounds_of(generator),
                           jpeg=jpeg_of(generator), body=body_of(generator), shadows=shadows_of(generator),
                           yaw_uniform=float(meta.get("yaw_uniform", YAW_UNIFORM)), **kw)
