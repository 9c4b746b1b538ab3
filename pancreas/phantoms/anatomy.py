"""The abdomen, drawn in patient millimetres: body wall, organs, bowel, vessels, bones and the pancreas.

:func:`draw_anatomy` turns a random generator into an :class:`Anatomy` (a list of :class:`Part`s painted
in order, later parts over earlier ones). :func:`paint` rasterizes it on any :class:`Grid`, returning
a tissue map; the pancreas is painted last so that it touches, and partly covers, the splenic vein,
the SMV and the duodenum. Coordinates: x to the patient's left, y posterior, z superior (mm), with
the pancreatic neck near the origin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

from pancreas.phantoms.geometry import Grid, Slices, Waves, catmull_rom, cylinder, ellipsoid, rotation, tube
from pancreas.phantoms.tissues import T

Shape = Callable[[Grid], "tuple[Slices, np.ndarray] | None"]

#: zones of the body: 0 outside, 1 subcutaneous fat, 2 muscle wall, 3 abdominal cavity
CAVITY, WALL, SKIN = 3, 2, 1

#: pancreas centreline (x, y, z mm) from the uncinate tip through head, neck and body to the tail, radii mm
PANCREAS_CONTROL = np.array([(-15, 20, -28), (-35, 12, -30), (-42, 3, -19), (-30, 0, -8), (-8, -2, -2),
                             (15, 5, 2), (40, 15, 8), (62, 30, 14)], float)
PANCREAS_RADII = np.array([6, 12, 14, 12, 9, 10, 9, 7], float)
#: control-index ranges of the pancreas parts (lesion locations)
PANCREAS_PARTS = {"head": (1.0, 3.2), "body": (4.0, 5.8), "tail": (5.8, 6.8)}


@dataclass(frozen=True)
class Part:
    """One structure: a shape and its tissue layers (threshold on the normalized field, outermost first)."""

    name: str
    shape: Shape
    layers: tuple[tuple[float, T], ...]
    zone: int = CAVITY  # paints only where the body zone is >= this
    gas_below_y: float | None = None  # air-fluid level: the innermost layer turns to gas anterior to this y


class Gland(Protocol):
    """What :func:`paint` and the field of view need of a pancreas: its field (< 1 inside) and bounding box."""

    def field(self, grid: Grid) -> tuple[Slices, np.ndarray] | None: ...

    def bbox(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class PancreasShape:
    points: np.ndarray  # spline samples (m, 3) mm
    radii: np.ndarray  # (m,) mm
    where: np.ndarray  # (m,) fractional control index of each sample
    waves: Waves

    def field(self, grid: Grid) -> tuple[Slices, np.ndarray] | None:
        return tube(grid, self.points, self.radii, self.waves)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radii[:, None] + 2.0
        return (self.points - r).min(0), (self.points + r).max(0)


@dataclass(frozen=True)
class Body:
    center: tuple[float, float]  # x, y mm
    semi: tuple[float, float]  # x, y mm
    wobble: tuple[float, float]  # relative amplitude and phase of the z variation

    def zones(self, grid: Grid) -> np.ndarray:
        """uint8 zone map (see CAVITY, WALL, SKIN) of the whole grid."""
        x, y, z = grid.axis(2)[None, None, :], grid.axis(1)[None, :, None], grid.axis(0)[:, None, None]
        scale = 1.0 + self.wobble[0] * np.sin(z / 90.0 + self.wobble[1])
        dx = ((x - self.center[0]) / self.semi[0]) ** 2
        dy = ((y - self.center[1]) / self.semi[1]) ** 2
        f = np.sqrt(dx + dy) / scale
        zone = (f < 1.0).astype(np.uint8)
        zone += f < 0.93
        zone += f < 0.885
        return zone


@dataclass(frozen=True)
class Anatomy:
    body: Body
    parts: list[Part]
    pancreas: Gland  # the drawn PancreasShape, or a real mask's gland (pancreas.phantoms.shapes)
    meta: dict = field(default_factory=dict)


def _j(rng: np.random.Generator, point: tuple[float, ...], sd: float = 4.0) -> np.ndarray:
    return np.asarray(point, float) + rng.normal(0, sd, 3)


def _ell(rng, name, center, semi, layers, *, tilt=12.0, lob=0.0, zone=CAVITY, gas=None) -> Part:
    waves = Waves.draw(rng, n=4, wavelength=(25, 60), amp=lob) if lob else None
    shape = partial(ellipsoid, center=_j(rng, center), semi=np.asarray(semi) * rng.uniform(0.9, 1.1, 3),
                    rot=rotation(rng, tilt), waves=waves)
    return Part(name, shape, layers, zone, gas)


def _tube(name, points, radius, layers, *, zone=CAVITY, gas=None, waves=None) -> Part:
    pts, _ = catmull_rom(np.asarray(points, float), step=max(4.0, 0.8 * float(np.max(radius))))
    radii = np.broadcast_to(np.asarray(radius, float), (len(pts),)) if np.ndim(radius) == 0 else radius
    return Part(name, partial(tube, points=pts, radii=radii, waves=waves), layers, zone, gas)


def _bowel(rng: np.random.Generator, name: str, points: np.ndarray, radius: float, wall: float,
           gas_p: float) -> list[Part]:
    """A bowel loop in short pieces, each with its own chance of an air-fluid level."""
    pts, _ = catmull_rom(points, step=max(4.0, 0.7 * radius))
    parts = []
    layers = ((1.0, T.BOWEL_WALL), (1.0 - wall / radius, T.BOWEL_FLUID))
    for i in range(0, len(pts) - 1, 4):
        piece = pts[i:i + 5]
        level = piece[:, 1].mean() - radius * rng.uniform(0.0, 0.7) if rng.random() < gas_p else None
        parts.append(Part(f"{name}{i}", partial(tube, points=piece, radii=np.full(len(piece), radius)),
                          layers, CAVITY, level))
    return parts


def _organs(rng: np.random.Generator) -> list[Part]:
    layered = ((1.0, T.BOWEL_WALL), (0.93, T.BOWEL_FLUID))
    kid = ((1.0, T.KIDNEY_CORTEX), (0.72, T.KIDNEY_MEDULLA), (0.3, T.FAT))
    return [
        _ell(rng, "lung_l", (85, 45, 215), (65, 70, 95), ((1.0, T.LUNG),), zone=WALL),
        _ell(rng, "lung_r", (-85, 45, 210), (65, 70, 95), ((1.0, T.LUNG),), zone=WALL),
        _ell(rng, "liver", (-80, 15, 65), (80, 95, 95), ((1.0, T.LIVER),), lob=0.05),
        _ell(rng, "gallbladder", (-58, -32, 2), (14, 14, 30), ((1.0, T.FLUID),)),
        _ell(rng, "spleen", (100, 55, 42), (28, 48, 45), ((1.0, T.SPLEEN),), tilt=20, lob=0.04),
        _ell(rng, "kidney_l", (72, 72, -28), (26, 24, 52), kid),
        _ell(rng, "kidney_r", (-72, 72, -40), (26, 24, 52), kid),
        _ell(rng, "stomach", (50, -42, 48), (52, 30, 45), layered, tilt=25, gas=-55.0 + rng.normal(0, 8)),
    ]


def _gut(rng: np.random.Generator) -> list[Part]:
    parts = _bowel(rng, "duodenum", np.array([(-20, -35, 16), (-55, -12, 10), (-66, 8, -12), (-58, 12, -42),
                                              (-25, 18, -50), (10, 8, -46)]) + rng.normal(0, 3, (6, 3)),
                   radius=11.0 + rng.uniform(-1, 2), wall=2.8, gas_p=0.3)
    parts += _bowel(rng, "colon", np.array([(-100, 0, -110), (-95, -20, -50), (-50, -72, -60), (40, -70, -55),
                                            (98, -15, -35), (100, 10, -110)]) + rng.normal(0, 5, (6, 3)),
                    radius=20.0, wall=2.5, gas_p=0.8)
    for k in range(8):  # small-bowel loops below the pancreas; two jejunal loops beside the tail
        near_tail = k < 2
        start = (rng.uniform(30, 80), rng.uniform(-35, 0), rng.uniform(-45, -20)) if near_tail else \
            (rng.uniform(-60, 60), rng.uniform(-70, -5), rng.uniform(-150, -70))
        walk = np.cumsum(np.vstack([start, rng.normal(0, 18, (4, 3))]), axis=0)
        parts += _bowel(rng, f"ileum{k}", walk, radius=rng.uniform(9, 13), wall=2.5, gas_p=0.25)
    return parts


def _muscles_and_bones(rng: np.random.Generator) -> list[Part]:
    col = np.array([(0, 0, 300), (0, 0, -300)], float)
    bone = ((1.0, T.BONE_CORTEX), (0.84, T.BONE_MARROW))
    parts = [
        _tube("psoas_l", [(35, 62, 20), (45, 55, -80), (55, 45, -200)], np.array([6.0, 22, 28]),
              ((1.0, T.MUSCLE),), zone=WALL),
        _tube("psoas_r", [(-35, 62, 20), (-45, 55, -80), (-55, 45, -200)], np.array([6.0, 22, 28]),
              ((1.0, T.MUSCLE),), zone=WALL),
        _tube("paraspinal_l", col + (38, 108, 0), 20.0, ((1.0, T.MUSCLE),), zone=SKIN),
        _tube("paraspinal_r", col + (-38, 108, 0), 20.0, ((1.0, T.MUSCLE),), zone=SKIN),
        _tube("discs", col + (0, 68, 0), 20.0, ((1.0, T.MUSCLE),), zone=SKIN),
    ]
    for zc in np.arange(-320, 320, 31.0) + rng.uniform(0, 31):
        body = partial(cylinder, center=_j(rng, (0, 68, zc), 1.0), semi=np.array([22, 20, 12.5]))
        parts.append(Part(f"vertebra{zc:.0f}", body, bone, SKIN))
        parts.append(_ell(rng, f"arch{zc:.0f}", (0, 100, zc), (24, 12, 11), bone, tilt=3, zone=SKIN))
        parts.append(_ell(rng, f"spinous{zc:.0f}", (0, 120, zc - 6), (5, 14, 9), bone, tilt=5, zone=SKIN))
    parts.append(_tube("canal", col + (0, 97, 0), 8.5, ((1.0, T.FLUID),), zone=SKIN))
    return parts + _ribs(rng)


def _ribs(rng: np.random.Generator) -> list[Part]:
    parts = []
    for zk in np.arange(-25, 260, 26.0) + rng.uniform(-5, 5):
        reach = np.deg2rad(rng.uniform(-70, -40) if zk > 30 else rng.uniform(-10, 20))
        theta = np.linspace(np.deg2rad(75), reach, 7)
        for side in (1, -1):
            pts = np.stack([side * 138 * np.cos(theta), 20 + 100 * np.sin(theta),
                            zk - 40 * np.linspace(0, 1, 7)], axis=1)
            parts.append(_tube(f"rib{zk:.0f}{side}", pts, 5.0, ((1.0, T.BONE_CORTEX), (0.6, T.BONE_MARROW)),
                               zone=WALL))
    return parts


def _vessels(rng: np.random.Generator, pancreas: PancreasShape) -> list[Part]:
    a = ((1.0, T.ARTERY),)
    v = ((1.0, T.VEIN),)
    conf = _j(rng, (-8, 11, -8), 2.0)
    neck = np.searchsorted(pancreas.where, 4.0)
    splenic = pancreas.points[neck::3] + np.stack([np.zeros(len(pancreas.points[neck::3])),
                                                   pancreas.radii[neck::3] * 0.85 + 3.0,
                                                   np.zeros(len(pancreas.points[neck::3]))], axis=1)
    return [
        _tube("aorta", [(6, 40, 300), (8, 38, 0), (4, 36, -150), (2, 40, -300)], 11.0 + rng.uniform(-1, 2), a),
        _tube("ivc", [(-30, 45, 300), (-25, 36, 0), (-22, 40, -300)], 11.5, v),
        _tube("celiac", [(8, 30, 22), (8, 14, 26), (14, 8, 30)], 3.5, a),
        _tube("sma", [(8, 30, 6), (5, 6, -6), (2, -4, -45), (-4, -15, -140)], 4.0, a),
        _tube("smv", [(-16, -12, -140), (-12, -2, -45), conf], 6.0, v),
        _tube("portal", [conf, (-30, 10, 15), (-60, 18, 38)], 7.0, v),
        _tube("splenic_v", np.vstack([conf, splenic, (95, 55, 30)]), 4.5, v),
    ]


def draw_pancreas(rng: np.random.Generator) -> PancreasShape:
    control = PANCREAS_CONTROL + rng.normal(0, 3.5, PANCREAS_CONTROL.shape)
    radii = PANCREAS_RADII * rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08, len(PANCREAS_RADII))
    points, where = catmull_rom(control, step=3.5)
    waves = Waves.draw(rng, n=10, wavelength=(9, 24), amp=rng.uniform(0.06, 0.11))
    return PancreasShape(points=points, radii=np.interp(where, np.arange(len(radii)), radii), where=where,
                         waves=waves)


def draw_anatomy(rng: np.random.Generator, pancreas: PancreasShape) -> Anatomy:
    """The rest of the abdomen around a (possibly lesion-bulged) pancreas."""
    body = Body(center=(rng.normal(0, 4), 20 + rng.normal(0, 4)),
                semi=(rng.uniform(140, 170), rng.uniform(102, 125)),
                wobble=(rng.uniform(0.0, 0.05), rng.uniform(0, 2 * np.pi)))
    parts = _organs(rng) + _gut(rng) + _muscles_and_bones(rng) + _vessels(rng, pancreas)
    return Anatomy(body=body, parts=parts, pancreas=pancreas)


def paint(grid: Grid, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize: returns the tissue map (uint8, :class:`T` ids) and the pancreas mask (bool)."""
    zone = anatomy.body.zones(grid)
    tissue = np.where(zone > 0, np.uint8(T.FAT), np.uint8(T.AIR)).astype(np.uint8)
    tissue[zone == WALL] = T.MUSCLE
    for part in anatomy.parts:
        found = part.shape(grid)
        if found is None:
            continue
        s, f = found
        allowed = zone[s] >= part.zone
        view = tissue[s]
        for threshold, t in part.layers:
            view[(f < threshold) & allowed] = t
        if part.gas_below_y is not None:
            y = grid.axis(1)[s[1]][None, :, None]
            view[(f < part.layers[-1][0]) & allowed & (y < part.gas_below_y)] = T.GAS
    pancreas = np.zeros(grid.shape, bool)
    found = anatomy.pancreas.field(grid)
    if found is not None:
        s, f = found
        inside = (f < 1.0) & (zone[s] == CAVITY)
        tissue[s][inside] = T.PANCREAS
        pancreas[s] = inside
    return tissue, pancreas
