"""Scalar distributions the phantom profiles sample from: uniform, a mixture of uniforms, measured percentiles.

Each draws with exactly the generator calls its docstring names, so that a profile built from them
reproduces a hand-written sampler draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Distribution(Protocol):
    def sample(self, rng: np.random.Generator) -> float: ...


@dataclass(frozen=True)
class Uniform:
    """``rng.uniform(lo, hi)``."""

    lo: float
    hi: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.lo, self.hi))


@dataclass(frozen=True)
class Mixture:
    """One ``rng.random()`` picks the first piece whose cumulative bound exceeds it, then ``rng.uniform``.

    ``pieces`` are ``(cumulative probability, lo, hi)``; the last bound must be 1.
    """

    pieces: tuple[tuple[float, float, float], ...]

    def __post_init__(self) -> None:
        bounds = [p[0] for p in self.pieces]
        if not bounds or bounds[-1] != 1.0 or bounds != sorted(bounds):
            raise ValueError(f"cumulative bounds {bounds} must increase to 1.0")

    def sample(self, rng: np.random.Generator) -> float:
        u = rng.random()
        for bound, lo, hi in self.pieces:
            if u < bound:
                return float(rng.uniform(lo, hi))
        return float(rng.uniform(*self.pieces[-1][1:]))

    @property
    def range(self) -> tuple[float, float]:
        return min(p[1] for p in self.pieces), max(p[2] for p in self.pieces)


@dataclass(frozen=True)
class Percentiles:
    """A measured distribution given by its percentiles; samples the piecewise-linear quantile function.

    ``values`` are the percentiles at ``levels`` (0-100, increasing). :meth:`sample` draws one
    ``rng.uniform(lo, hi)`` level, so ``(5, 95)`` keeps the central 90 % and leaves out extreme cases.
    ``source`` says where the numbers were measured.
    """

    levels: tuple[float, ...]
    values: tuple[float, ...]
    source: str
    lo: float = 0.0
    hi: float = 100.0

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.values) or len(self.levels) < 2:
            raise ValueError(f"{len(self.levels)} levels and {len(self.values)} values must match (>= 2)")
        if list(self.levels) != sorted(self.levels) or list(self.values) != sorted(self.values):
            raise ValueError(f"levels {self.levels} and values {self.values} must both increase")
        if not self.levels[0] <= self.lo < self.hi <= self.levels[-1]:
            raise ValueError(f"sampled levels ({self.lo}, {self.hi}) must lie within {self.levels[0]}-"
                             f"{self.levels[-1]}")

    def at(self, level: float) -> float:
        """The value at percentile ``level`` (interpolated)."""
        return float(np.interp(level, self.levels, self.values))

    @property
    def median(self) -> float:
        return self.at(50.0)

    @property
    def range(self) -> tuple[float, float]:
        """The measured minimum and maximum (the whole table, not just the sampled part)."""
        return float(self.values[0]), float(self.values[-1])

    @property
    def sampled(self) -> tuple[float, float]:
        """The smallest and largest value :meth:`sample` can return."""
        return self.at(self.lo), self.at(self.hi)

    def sample(self, rng: np.random.Generator) -> float:
        return self.at(float(rng.uniform(self.lo, self.hi)))

    def between(self, lo: float, hi: float) -> Percentiles:
        """The same table, sampled between percentiles ``lo`` and ``hi``."""
        return Percentiles(self.levels, self.values, self.source, lo, hi)
