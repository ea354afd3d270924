"""One Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorized over arrays of any shape.

An adaptive low-pass filter: the cutoff frequency grows with the (filtered) speed of the signal, so slow
movements are smoothed strongly (little jitter) and fast ones lag little:
``cutoff = min_cutoff + beta * |dx/dt|``, ``alpha = 1 / (1 + tau / Te)`` with ``tau = 1 / (2 pi cutoff)``.
Each element of the array is filtered independently (its own speed and cutoff).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class OneEuroSettings:
    """min_cutoff (Hz): smoothing at rest (lower = smoother); beta: speed coefficient (higher = less lag when
    moving); d_cutoff (Hz): cutoff of the derivative estimate; enabled False = pass-through."""
    min_cutoff: float = 1.0
    beta: float = 0.05
    d_cutoff: float = 1.0
    enabled: bool = True

    def __post_init__(self):
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError(f"invalid One Euro settings: {self}")


def _alpha(cutoff, dt: float):
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """``f = OneEuroFilter(OneEuroSettings(), freq=30.0)``; ``y = f(x, t)`` per sample (t in seconds; when t does not
    increase, 1/freq is used as the time step). ``reset()`` forgets the history (e.g. after a lost track)."""

    def __init__(self, settings: OneEuroSettings | None = None, freq: float = 30.0):
        if freq <= 0:
            raise ValueError("freq must be > 0")
        self.settings = settings or OneEuroSettings()
        self.freq = float(freq)
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.settings.enabled:
            return x.copy()
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = 1.0 / self.freq
        if t is not None and self._t is not None and t > self._t:
            dt = t - self._t
        self._t = t if t is not None else (self._t + dt if self._t is not None else None)
        s = self.settings
        dx = (x - self._x) / dt
        a_d = _alpha(s.d_cutoff, dt)
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = s.min_cutoff + s.beta * np.abs(self._dx)
        a = _alpha(cutoff, dt)
        self._x = a * x + (1.0 - a) * self._x
        return self._x.copy()
