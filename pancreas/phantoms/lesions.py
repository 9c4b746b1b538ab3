"""Pancreatic lesions (label 2) and their subtype-specific appearance.

A lesion is an ellipsoid centred on the pancreatic centreline of the head, body or tail. The gland is
bulged around it (as a mass does) so that the whole lesion lies inside the pancreas; the label is the
ellipsoid intersected with the pancreas, so label 2 only ever replaces label-1 voxels.

Appearance per subtype (HU relative to the case's pancreas ``P``; the ranges overlap on purpose):

* 0 solid, hypodense, ill-defined: ``P - 45 .. P - 15`` (20 %: ``P - 70 .. P - 40``), soft 1.2-2.5 mm edge,
  heterogeneous (5-9 HU internal texture), no rim.
* 1 cystic, near water: 0-40 HU, sharp edge (0.15-0.4 mm), homogeneous, thin enhancing wall in half of
  them and a septum in a quarter.
* 2 hyperenhancing (60 %: ``P + 15 .. P + 50``, mildly sharp) or iso-dense (``P - 18 .. P + 8``) with an
  enhancing 1.5-3 mm rim; 25 % of the hyperenhancing ones have a faint rim too.

These are the classic looks and diameters (5-35 mm); a :class:`LesionModel` swaps them per subtype (the
``quiz`` profile draws the diameter from measured volumes and subtype 2 as a :class:`RelativeLook`).
A lesion with a ``region`` (a real mask's lesion, :mod:`pancreas.phantoms.shapes`) keeps its drawn look but
takes its voxels and boundary distance from that region instead of the ellipsoid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from pancreas.phantoms.anatomy import PANCREAS_PARTS, PancreasShape
from pancreas.phantoms.distributions import Distribution, Mixture, Uniform
from pancreas.phantoms.geometry import Grid, Slices, Waves, ellipsoid, rotation

#: lesion location probabilities
LOCATIONS = {"head": 0.5, "body": 0.3, "tail": 0.2}


@dataclass(frozen=True)
class Look:
    core_hu: float  # absolute HU of the lesion's centre
    edge_mm: float  # width of the boundary transition (ill-defined = wide)
    texture: float  # HU amplitude of internal heterogeneity
    rim_mm: float = 0.0  # rim thickness (0: no rim)
    rim_hu: float = 0.0  # rim HU above the core
    septum_hu: float = 0.0  # a thin septum (0: none)


class Region(Protocol):
    """A lesion's extent given as a signed distance (mm, negative inside) on any grid."""

    def distance(self, grid: Grid) -> tuple[Slices, np.ndarray] | None: ...


@dataclass(frozen=True)
class Lesion:
    subtype: int
    location: str
    center: np.ndarray  # (x, y, z) mm
    semi: np.ndarray  # semi-axes mm
    rot: np.ndarray
    diameter_mm: float  # nominal: diameter of the sphere of equal volume
    look: Look
    waves: Waves  # internal texture field (unit amplitude)
    region: Region | None = None  # replaces the ellipsoid (a real mask's lesion)


def _solid(rng: np.random.Generator, p: float) -> Look:
    delta = rng.uniform(-70, -40) if rng.random() < 0.2 else rng.uniform(-45, -15)
    return Look(core_hu=p + delta, edge_mm=rng.uniform(1.2, 2.5), texture=rng.uniform(5, 9))


def _cyst(rng: np.random.Generator, p: float) -> Look:
    wall = rng.random() < 0.5
    return Look(core_hu=rng.uniform(0, 40), edge_mm=rng.uniform(0.15, 0.4), texture=rng.uniform(0, 1.5),
                rim_mm=rng.uniform(0.6, 1.0) if wall else 0.0, rim_hu=rng.uniform(15, 40) if wall else 0.0,
                septum_hu=rng.uniform(25, 50) if rng.random() < 0.25 else 0.0)


def _enhancing(rng: np.random.Generator, p: float) -> Look:
    if rng.random() < 0.6:
        faint = rng.random() < 0.25
        return Look(core_hu=p + rng.uniform(15, 50), edge_mm=rng.uniform(0.4, 0.9), texture=rng.uniform(2, 5),
                    rim_mm=rng.uniform(1.0, 2.0) if faint else 0.0, rim_hu=rng.uniform(10, 25) if faint else 0.0)
    return Look(core_hu=p + rng.uniform(-18, 8), edge_mm=rng.uniform(0.4, 0.9), texture=rng.uniform(2, 5),
                rim_mm=rng.uniform(1.5, 3.0), rim_hu=rng.uniform(35, 65))


LookFn = Callable[[np.random.Generator, float], Look]
#: subtype -> appearance sampler (given the pancreas HU)
LOOKS: dict[int, LookFn] = {0: _solid, 1: _cyst, 2: _enhancing}


@dataclass(frozen=True)
class RelativeLook:
    """A lesion whose core is ``pancreas HU + delta`` (``delta`` drawn first), without rim or septum."""

    delta: Distribution
    edge_mm: Uniform = field(default_factory=lambda: Uniform(0.4, 0.9))
    texture: Uniform = field(default_factory=lambda: Uniform(2.0, 5.0))

    def __call__(self, rng: np.random.Generator, p: float) -> Look:
        return Look(core_hu=p + self.delta.sample(rng), edge_mm=self.edge_mm.sample(rng),
                    texture=self.texture.sample(rng))


@dataclass(frozen=True)
class EquivalentDiameter:
    """Diameter (mm) of the sphere whose volume is drawn from ``volume_ml``."""

    volume_ml: Distribution

    def sample(self, rng: np.random.Generator) -> float:
        return float(np.cbrt(6.0 * 1000.0 * self.volume_ml.sample(rng) / np.pi))


#: 5-35 mm, biased to 10-30 mm (80 %) so that a small network can learn to segment most lesions
CLASSIC_DIAMETER = Mixture(((0.1, 5.0, 10.0), (0.2, 30.0, 35.0), (1.0, 10.0, 30.0)))


@dataclass(frozen=True)
class LesionModel:
    """Per subtype: the nominal diameter (mm) and the appearance sampler."""

    diameter: Mapping[int, Distribution] = field(default_factory=lambda: dict.fromkeys((0, 1, 2),
                                                                                       CLASSIC_DIAMETER))
    looks: Mapping[int, LookFn] = field(default_factory=lambda: dict(LOOKS))


def draw_diameter(rng: np.random.Generator) -> float:
    """The classic diameter (see :data:`CLASSIC_DIAMETER`)."""
    return CLASSIC_DIAMETER.sample(rng)


def draw_lesion(rng: np.random.Generator, subtype: int, pancreas: PancreasShape, pancreas_hu: float,
                model: LesionModel | None = None) -> Lesion:
    """A lesion for ``subtype`` on the pancreas centreline (see :func:`bulge` for the gland around it)."""
    model = model or LesionModel()
    names = list(LOCATIONS)
    location = names[rng.choice(len(names), p=list(LOCATIONS.values()))]
    lo, hi = PANCREAS_PARTS[location]
    i = int(np.argmin(np.abs(pancreas.where - rng.uniform(lo, hi))))
    diameter = model.diameter[subtype].sample(rng)
    aspect = rng.uniform(0.85, 1.18, 3)
    semi = diameter / 2 * aspect / np.cbrt(np.prod(aspect))
    offset = rng.normal(0, 1, 3)
    offset *= rng.uniform(0, 0.25) * pancreas.radii[i] / np.linalg.norm(offset)
    center = pancreas.points[i] + offset
    lesion = Lesion(subtype=subtype, location=location, center=center, semi=semi, rot=rotation(rng, 90),
                    diameter_mm=diameter, look=model.looks[subtype](rng, pancreas_hu),
                    waves=Waves.draw(rng, n=6, wavelength=(4, 10), amp=1.0))
    return lesion


def bulge(pancreas: PancreasShape, lesion: Lesion, factor: float = 1.1, margin_mm: float = 2.5) -> PancreasShape:
    """Widen the gland around the lesion so the lesion (and the lobulated margin) stays inside it.

    Around the lesion the gland reaches ``(largest semi-axis + centreline offset) * factor + margin_mm``.
    """
    u = np.linalg.norm(pancreas.points - lesion.center, axis=1)
    reach = (lesion.semi.max() + u.min()) * factor + margin_mm
    need = np.sqrt(np.maximum(reach ** 2 - u ** 2, 0.0))
    return replace(pancreas, radii=np.maximum(pancreas.radii, need))


def _extent(grid: Grid, lesion: Lesion) -> tuple[Slices, np.ndarray, np.ndarray] | None:
    """(slices, ~signed distance to the boundary in mm, inside) of the lesion's region or ellipsoid."""
    if lesion.region is not None:
        found = lesion.region.distance(grid)
        return None if found is None else (found[0], found[1], found[1] < 0)
    found = ellipsoid(grid, lesion.center, lesion.semi * 1.3, lesion.rot)
    if found is None:
        return None
    s, f = found
    f = f * 1.3  # normalized to the lesion's own semi-axes, evaluated out to 1.3x
    return s, (f - 1.0) * float(np.cbrt(np.prod(lesion.semi))), f < 1.0


def render(grid: Grid, lesion: Lesion, hu: np.ndarray, pancreas: np.ndarray) -> np.ndarray:
    """Blend the lesion into ``hu`` (in place) inside the pancreas; returns the lesion label (bool)."""
    label = np.zeros(grid.shape, bool)
    found = _extent(grid, lesion)
    if found is None:
        return label
    s, dist, inside = found
    look = lesion.look
    inside_p = pancreas[s]
    weight = inside_p / (1.0 + np.exp(np.clip(dist / max(look.edge_mm * 0.5, 0.05), -30, 30)))
    coords = grid.coords(s)
    value = np.full(dist.shape, look.core_hu, np.float32)
    if look.texture:
        value += look.texture * lesion.waves(coords)
    if look.rim_mm:
        value += look.rim_hu * ((dist > -look.rim_mm) & (dist < 0.3))
    if look.septum_hu:
        x, y, z = coords
        normal = lesion.rot[:, 0]
        d = (x - lesion.center[0]) * normal[0] + (y - lesion.center[1]) * normal[1] + \
            (z - lesion.center[2]) * normal[2]
        value += look.septum_hu * ((np.abs(d) < 0.7) & (dist < 0))
    hu[s] = hu[s] * (1.0 - weight) + weight * value
    label[s] = inside & inside_p
    return label
