"""On-the-fly synthetic training batches (render -> face-metered exposure -> another person's head in the background
-> paper augmentation of the head layer over the background -> black crop border -> occlude -> degrade [-> a
blurred surround: ``context_blur``, off by default]);
scenes get environment lighting (sampler.sample_lighting) and the yaw-aware hair locks and glasses of
accessories.draw.

``SyntheticStream`` renders fresh batches and keeps a small replay pool: with ``reuse`` > 0 a rendered batch is
served ``1 + reuse`` times, each time with new occlusion/degradation/augmentation (cheap), which keeps a slow CPU
busy training instead of rendering. Deterministic for a given seed and rank.

``Prefetcher`` makes a stream's batches ahead in a background thread (on CUDA, on a stream of its own), so the data
engine runs while the network trains: the same batches in the same order as the stream gives them directly.
"""
from __future__ import annotations

import contextlib
import queue
import threading

import torch

from ..synth.ict import load_ict
from ..synth.render import GENERATOR_VERSION, FaceRenderer
from ..synth.sampler import (YAW_UNIFORM, augment, black_border, blur_context, degrade, distract, expose, occlude,
                             sample_lighting, sample_params)

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


def generator_name(without=(), context_blur: float = 0.0) -> str:
    """The training data's generator: GENERATOR_VERSION, or e.g. "ictsynth-11 without distract+sh", with
    " with context-blur 0.5" when that share of the scenes had their surround blurred (sampler.blur_context)."""
    unknown = set(without) - set(SCENE_FEATURES)
    if unknown:
        raise ValueError(f"unknown scene features {sorted(unknown)}; known: {', '.join(SCENE_FEATURES)}")
    if not 0 <= context_blur <= 1:
        raise ValueError(f"context blur {context_blur}: a probability in [0, 1]")
    return (GENERATOR_VERSION + (f" without {'+'.join(sorted(without))}" if without else "")
            + (f"{CONTEXT_BLUR}{context_blur:g}" if context_blur else ""))


def without_of(generator: str) -> list[str]:
    """The scene features a generator name says were off (the inverse of generator_name), less the retired ones
    (the generator no longer has them: off anyway)."""
    generator = generator.partition(CONTEXT_BLUR)[0]
    named = generator.partition(" without ")[2].split("+") if " without " in generator else []
    return [f for f in named if f not in RETIRED_FEATURES]


def context_blur_of(generator: str) -> float:
    """The context-blur probability a generator name records (0 without one)."""
    return float(generator.partition(CONTEXT_BLUR)[2] or 0)


class SyntheticStream:
    def __init__(self, batch: int, seed: int = 0, rank: int = 0, device="cpu", reuse: int = 0,
                 max_yaw: float = 90.0, shared=None, augment_on: bool = True, density: float = 40.0,
                 yaw_uniform: float = YAW_UNIFORM, without=(), context_blur: float = 0.0):
        generator_name(without, context_blur)                     # validates the names and the probability
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
        self._kpt = torch.from_numpy(self.renderer.layout.kpt_xy).long().to(dev)   # (68,2) landmark UV pixels (x,y)
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
        img = degrade(occlude(black_border(img, g), g), g)
        if self.context_blur:
            lm = pos[:, :2, self._kpt[:, 1], self._kpt[:, 0]].transpose(1, 2)     # (B,68,2) crop pixels
            img = blur_context(img, lm, self.gc, self.context_blur)
        return img, pos


class Prefetcher:
    """Iterates ``stream``'s batches, made up to ``depth`` ahead by a daemon thread: the training loop's step and
    the next batch's rendering overlap (on a GPU, one thread's Python launches kernels while the other's execute;
    torch releases the GIL in its ops).

    On CUDA the thread works on its own CUDA stream; each batch carries an event that the consumer's stream waits
    on, and its tensors are recorded on that stream so the caching allocator does not hand their memory back to
    the producer before the step that reads them has run. The stream's generators are used by the thread alone,
    so the batches and their order are exactly those of ``next(stream)``. An error in the thread is raised by the
    ``next`` that would have returned its batch. ``close()`` (or the ``with`` block's end) stops the thread.
    """

    def __init__(self, stream, depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.stream = stream
        dev = torch.device(stream.device)
        self._device = dev if dev.type == "cuda" else None
        self._cuda = torch.cuda.Stream(dev) if self._device is not None else None
        if self._cuda is not None:              # the stream's GPU buffers were made on this thread's stream
            self._cuda.wait_stream(torch.cuda.current_stream(dev))
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="prn-data-prefetch", daemon=True)
        self._thread.start()

    def _work(self):
        try:
            if self._device is not None:
                torch.cuda.set_device(self._device)              # the current device is per thread
            with torch.cuda.stream(self._cuda) if self._cuda is not None else contextlib.nullcontext():
                while not self._stop.is_set():
                    img, pos = next(self.stream)
                    done = None
                    if self._cuda is not None:
                        done = torch.cuda.Event()
                        done.record(self._cuda)
                    self._put((img, pos, done))
        except BaseException as e:   # noqa: BLE001 - handed to the consumer, which raises it
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._stop.is_set():
                raise StopIteration
            try:
                item = self._q.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the data prefetch thread stopped without a batch or an error") from None
        if isinstance(item, BaseException):
            self.close()
            raise RuntimeError(f"the synthetic data engine failed in the prefetch thread: {item!r}") from item
        img, pos, done = item
        if done is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(done)
            img.record_stream(current)
            pos.record_stream(current)
        return img, pos

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._q.get_nowait()                             # unblocks a put waiting on a full queue
        self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_stream(meta: dict, batch: int, seed: int, **kw) -> SyntheticStream:
    """A stream of the scenes a run trained on, from its weights' metadata: its scene features and yaw prior (for
    BatchNorm recalibration: the statistics are those of the run's own data), context blur included."""
    generator = meta.get("generator", "")
    return SyntheticStream(batch, seed=seed, without=without_of(generator), context_blur=context_blur_of(generator),
                           yaw_uniform=float(meta.get("yaw_uniform", YAW_UNIFORM)), **kw)
