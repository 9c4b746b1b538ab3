"""The gland around a lesion: bulged as drawn (classic) or rescaled to a drawn parenchyma volume (quiz).

The volumes are estimated on a coarse grid over the pancreas alone (no body, no other organs), the way
:func:`pancreas.phantoms.anatomy.paint` and :func:`pancreas.phantoms.lesions.render` label it: label 1 is
the tube minus the lesion ellipsoid, label 2 the ellipsoid inside the tube.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from pancreas.phantoms.anatomy import PancreasShape
from pancreas.phantoms.distributions import Distribution
from pancreas.phantoms.geometry import Grid, ellipsoid
from pancreas.phantoms.lesions import Lesion, bulge

#: grid step (mm) of the volume estimate and the radius factors a fit may apply
STEP_MM = 1.5
SCALE_LIMITS = (0.6, 1.6)


def _rasterize(pancreas: PancreasShape, step_mm: float) -> tuple[Grid, np.ndarray]:
    """A coarse grid over the gland alone and the gland mask on it."""
    lo, hi = pancreas.bbox()
    pad = 0.3 * float(pancreas.radii.max())  # lobulation reaches past the nominal radius
    lo, hi = lo - pad, hi + pad
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step_mm)[::-1] + 1)
    grid = Grid(shape=shape, spacing=(step_mm,) * 3, origin=tuple(float(v) for v in lo))
    gland = np.zeros(shape, bool)
    found = pancreas.field(grid)
    if found is not None:
        gland[found[0]] = found[1] < 1.0
    return grid, gland


def gland_centroid(pancreas: PancreasShape, step_mm: float = STEP_MM) -> np.ndarray:
    """Centroid (x, y, z mm) of the gland (labels 1 and 2) as it would be painted."""
    grid, gland = _rasterize(pancreas, step_mm)
    zyx = np.argwhere(gland).mean(0) if gland.any() else (np.asarray(grid.shape) - 1) / 2
    return np.asarray(grid.origin) + zyx[::-1] * step_mm


def gland_volumes(pancreas: PancreasShape, lesion: Lesion, step_mm: float = STEP_MM) -> tuple[float, float]:
    """(parenchyma, lesion) volume in mL of ``pancreas`` (already bulged) with ``lesion`` inside."""
    grid, gland = _rasterize(pancreas, step_mm)
    shape = grid.shape
    inside = np.zeros(shape, bool)
    found = ellipsoid(grid, lesion.center, lesion.semi, lesion.rot)
    if found is not None:
        inside[found[0]] = found[1] < 1.0
    inside &= gland
    ml = step_mm ** 3 / 1000.0
    return float(np.count_nonzero(gland & ~inside) * ml), float(np.count_nonzero(inside) * ml)


def fit_parenchyma(pancreas: PancreasShape, lesion: Lesion, target_ml: float, *, rounds: int = 3,
                   reach: tuple[float, float] = (1.0, 1.0)) -> PancreasShape:
    """Scale the (unbulged) gland's radii so that, bulged around ``lesion``, label 1 holds ``target_ml``.

    Volume goes roughly with the radius squared; each round corrects the last estimate, and the total
    factor stays within :data:`SCALE_LIMITS` so that the gland keeps a plausible calibre. ``reach`` is
    the bulge's ``(factor, margin_mm)``: a thin rim, so that a large lesion does not bring a thick shell
    of parenchyma with it.
    """
    if target_ml <= 0:
        raise ValueError(f"target parenchyma volume {target_ml} mL must be > 0")
    total = 1.0
    for _ in range(rounds):
        got, _ = gland_volumes(bulge(replace(pancreas, radii=pancreas.radii * total), lesion, *reach), lesion)
        total = float(np.clip(total * np.sqrt(target_ml / max(got, 1e-3)), *SCALE_LIMITS))
    return bulge(replace(pancreas, radii=pancreas.radii * total), lesion, *reach)


class GlandModel(Protocol):
    def shape(self, rng: np.random.Generator, subtype: int, pancreas: PancreasShape,
              lesion: Lesion) -> PancreasShape: ...


@dataclass(frozen=True)
class BulgedGland:
    """The drawn gland, bulged around the lesion (no random draws)."""

    def shape(self, rng: np.random.Generator, subtype: int, pancreas: PancreasShape,
              lesion: Lesion) -> PancreasShape:
        return bulge(pancreas, lesion)


@dataclass(frozen=True)
class FittedGland:
    """The gland rescaled to a parenchyma volume (mL) drawn per subtype."""

    parenchyma_ml: Mapping[int, Distribution]

    def shape(self, rng: np.random.Generator, subtype: int, pancreas: PancreasShape,
              lesion: Lesion) -> PancreasShape:
        return fit_parenchyma(pancreas, lesion, self.parenchyma_ml[subtype].sample(rng))
