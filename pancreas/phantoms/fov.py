"""The field of view of a phantom: a quiz-like crop around the pancreas or a whole 512 x 512 abdominal CT.

A :class:`CropModel` / :class:`FullModel` holds the distributions of the voxel spacing and extent; the
classic ones reproduce the generator's original draws, the ``quiz`` profile swaps in measured ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from pancreas.phantoms.anatomy import Anatomy
from pancreas.phantoms.distributions import Distribution, Mixture, Percentiles, Uniform
from pancreas.phantoms.geometry import Grid

#: the real quiz crops: median 64 x 119 x 178 voxels at 2.0 x 0.73 x 0.73 mm -> extent in mm (z, y, x)
QUIZ_EXTENT_MM = (128.0, 87.0, 130.0)


class Extent(Protocol):
    def draw(self, rng: np.random.Generator) -> np.ndarray: ...  # (x, y, z) mm


@dataclass(frozen=True)
class JitteredExtent:
    """``median`` (z, y, x mm) times one ``rng.uniform(lo, hi, 3)`` factor per axis."""

    median_zyx: tuple[float, float, float] = QUIZ_EXTENT_MM
    factor: tuple[float, float] = (0.85, 1.15)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.median_zyx[::-1]) * rng.uniform(*self.factor, 3)


@dataclass(frozen=True)
class MeasuredExtent:
    """Each axis drawn from its own measured distribution (z, then y, then x)."""

    z: Percentiles
    y: Percentiles
    x: Percentiles

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        z, y, x = (d.sample(rng) for d in (self.z, self.y, self.x))
        return np.array([x, y, z])


#: classic crop slice spacing: 1.5-3 mm for 80 % of cases, otherwise 0.7-1.5 or 3-5 mm
CLASSIC_CROP_SLICE = Mixture(((0.8, 1.5, 3.0), (0.9, 0.7, 1.5), (1.0, 3.0, 5.0)))
#: classic full-CT slice spacing: 0.7-1.25 (30 %), 1.25-3 (40 %) or 3-5 mm (30 %)
CLASSIC_FULL_SLICE = Mixture(((0.3, 0.7, 1.25), (0.7, 1.25, 3.0), (1.0, 3.0, 5.0)))


@dataclass(frozen=True)
class CropModel:
    """A quiz-like ROI: slice and in-plane spacing, extent (widened to cover the pancreas), slice count.

    ``cover_gland`` lets the slice count exceed ``slices[1]`` just as far as the gland needs where thin
    slices would cut it (real shapes); off, as the profiles have it, a tall gland on thin slices may reach
    past the crop.
    """

    slice_mm: Distribution = CLASSIC_CROP_SLICE
    inplane_mm: Distribution = field(default_factory=lambda: Uniform(0.6, 0.9))
    extent: Extent = field(default_factory=JitteredExtent)
    slices: tuple[int, int] = (24, 112)
    cover_gland: bool = False

    def covering(self) -> CropModel:
        """This model, with crops that always hold the whole gland."""
        return replace(self, cover_gland=True)

    def grid(self, rng: np.random.Generator, anatomy: Anatomy) -> Grid:
        sz = self.slice_mm.sample(rng)
        sxy = self.inplane_mm.sample(rng)
        lo, hi = anatomy.pancreas.bbox()
        center = (lo + hi) / 2 + rng.normal(0, 4, 3)
        extent_xyz = self.extent.draw(rng)
        need_xyz = hi - lo + 2 * np.abs(center - (lo + hi) / 2) + 8.0  # the gland, 4 mm clear each side
        extent_xyz = np.maximum(extent_xyz, need_xyz)
        spacing_xyz = np.array([sxy, sxy, sz])
        shape_xyz = np.rint(extent_xyz / spacing_xyz).astype(int)
        shape_xyz[2] = int(np.clip(shape_xyz[2], *self.slices))
        if self.cover_gland:  # (n - 1) slices span at least what the gland needs
            shape_xyz[2] = max(int(shape_xyz[2]), int(np.ceil(need_xyz[2] / sz)) + 1)
        origin = center - spacing_xyz * (shape_xyz - 1) / 2
        return Grid(shape=tuple(int(n) for n in shape_xyz[::-1]), spacing=(sz, sxy, sxy),
                    origin=tuple(float(o) for o in origin))


@dataclass(frozen=True)
class FullModel:
    """A whole abdominal CT: 512 x 512 in-plane, 80-300 slices; the in-plane field of view is fitted to the
    body width (as scanner operators do) and clipped to ``inplane_mm``."""

    slice_mm: Distribution = CLASSIC_FULL_SLICE
    inplane_mm: tuple[float, float] = (0.6, 0.9)
    cover_gland: bool = False  # as CropModel's: more than 300 slices where thin slices would cut the gland

    def covering(self) -> FullModel:
        """This model, with scans that always hold the whole gland (300 slices of 0.45 mm span only 135 mm)."""
        return replace(self, cover_gland=True)

    def grid(self, rng: np.random.Generator, anatomy: Anatomy) -> Grid:
        sz = self.slice_mm.sample(rng)
        sxy = float(np.clip(2 * anatomy.body.semi[0] * rng.uniform(1.05, 1.3) / 512, *self.inplane_mm))
        nz = int(np.clip(np.rint(rng.uniform(240, 400) / sz), 80, 300))
        lo, hi = anatomy.pancreas.bbox()
        zc = (lo[2] + hi[2]) / 2 + rng.uniform(-30, 30)
        if self.cover_gland:  # (nz - 1) slices span the gland, off-centre by zc, 4 mm clear each side
            nz = max(nz, int(np.ceil((hi[2] - lo[2] + 2 * abs(zc - (lo[2] + hi[2]) / 2) + 8.0) / sz)) + 1)
        cx, cy = anatomy.body.center
        origin = (cx - sxy * 511 / 2, cy - sxy * 511 / 2, zc - sz * (nz - 1) / 2)
        return Grid(shape=(nz, 512, 512), spacing=(sz, sxy, sxy), origin=tuple(float(o) for o in origin))


def crop_grid(rng: np.random.Generator, anatomy: Anatomy, model: CropModel | None = None) -> Grid:
    """A quiz-like ROI around the pancreas (classic: the extent varies +-15 % around the quiz median)."""
    return (model or CropModel()).grid(rng, anatomy)


def full_grid(rng: np.random.Generator, anatomy: Anatomy, model: FullModel | None = None) -> Grid:
    """A whole abdominal CT (classic: 0.7-5 mm slices, 0.6-0.9 mm pixels)."""
    return (model or FullModel()).grid(rng, anatomy)


#: ``shape`` option -> field-of-view drawer
GRIDS: dict[str, Callable[..., Grid]] = {"crop": crop_grid, "full": full_grid}
