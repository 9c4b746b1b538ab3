"""Voxel grids in patient millimetres and the implicit shapes the anatomy is drawn with.

Patient coordinates are given as ``(x, y, z)`` mm with x towards the patient's left, y posterior and
z superior (the LPS world axes). A :class:`Grid` maps them to a canonical ``(z, y, x)`` numpy array,
the same layout :func:`pancreas.nifti.read_volume` returns. Every shape is evaluated only inside its
bounding box, and only from physical coordinates, so the anatomy does not depend on the voxel spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Slices = tuple[slice, slice, slice]
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]  # broadcastable x, y, z coordinate arrays (mm)


@dataclass(frozen=True)
class Grid:
    """A canonical voxel grid: ``shape``/``spacing`` in numpy (z, y, x) order, ``origin`` in (x, y, z) mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, n: int) -> np.ndarray:
        """Patient coordinate (mm) of every voxel along numpy axis ``n``."""
        return (self.origin[2 - n] + self.spacing[n] * np.arange(self.shape[n])).astype(np.float32)

    def region(self, lo: np.ndarray, hi: np.ndarray) -> tuple[Slices, Coords] | None:
        """Slices covering the (x, y, z) box ``[lo, hi]`` and broadcastable coordinates there; None if empty."""
        slices = []
        for n in range(3):
            w = 2 - n
            a = int(np.ceil((lo[w] - self.origin[w]) / self.spacing[n]))
            b = int(np.floor((hi[w] - self.origin[w]) / self.spacing[n])) + 1
            a, b = max(a, 0), min(b, self.shape[n])
            if a >= b:
                return None
            slices.append(slice(a, b))
        return tuple(slices), self.coords(tuple(slices))

    def coords(self, slices: Slices) -> Coords:
        """Broadcastable (x, y, z) patient coordinates (mm) of the voxels in ``slices``."""
        z, y, x = (self.axis(n)[s] for n, s in enumerate(slices))
        return x[None, None, :], y[None, :, None], z[:, None, None]

    def sub(self, slices: Slices) -> Grid:
        """The grid restricted to ``slices`` (used to work in a bounding box)."""
        start = [s.start for s in slices]
        origin = tuple(self.origin[w] + self.spacing[2 - w] * start[2 - w] for w in range(3))
        shape = tuple(s.stop - s.start for s in slices)
        return Grid(shape=shape, spacing=self.spacing, origin=origin)


@dataclass(frozen=True)
class Waves:
    """A smooth, spacing-independent random field: a sum of plane waves in mm (lobulation, bumps)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)
    amp: np.ndarray  # (n,)

    @classmethod
    def draw(cls, rng: np.random.Generator, *, n: int, wavelength: tuple[float, float], amp: float) -> Waves:
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        k = d * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
        return cls(k=k, phase=rng.uniform(0, 2 * np.pi, n), amp=np.full(n, amp / np.sqrt(n)))

    def __call__(self, c: Coords) -> np.ndarray:
        """Evaluate on separable coordinates (x along the last axis, y the middle one, z the first).

        Uses cos(a + b) = cos a cos b - sin a sin b so that only 2D and 1D cosines are computed.
        """
        x, y, z = c
        shape = (z.shape[0], y.shape[1], x.shape[2])
        out = np.zeros(shape, np.float32)
        tmp = np.empty(shape, np.float32)
        for (kx, ky, kz), ph, a in zip(self.k, self.phase, self.amp):
            plane = (kx * x[0] + ky * y[0] + ph).astype(np.float32)  # (Y, X)
            zz = (kz * z[:, 0, 0]).astype(np.float32)
            np.multiply(np.float32(a) * np.cos(plane)[None], np.cos(zz)[:, None, None], out=tmp)
            out += tmp
            np.multiply(np.float32(a) * np.sin(plane)[None], np.sin(zz)[:, None, None], out=tmp)
            out -= tmp
        return out


def ellipsoid(grid: Grid, center: np.ndarray, semi: np.ndarray, rot: np.ndarray | None = None,
              waves: Waves | None = None) -> tuple[Slices, np.ndarray] | None:
    """Normalized radius ``f`` (< 1 inside) of an ellipsoid with optional rotation and lobulation."""
    center, semi = np.asarray(center, float), np.asarray(semi, float)
    reach = semi.max() * 1.3 if rot is not None or waves is not None else semi * 1.05
    found = grid.region(center - reach, center + reach)
    if found is None:
        return None
    slices, (x, y, z) = found
    d = [x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2])]
    if rot is not None:  # coordinates in the ellipsoid's frame: rot.T @ d
        d = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
    f = np.sqrt((d[0] / semi[0]) ** 2 + (d[1] / semi[1]) ** 2 + (d[2] / semi[2]) ** 2)
    f = np.broadcast_to(f, tuple(s.stop - s.start for s in slices)).astype(np.float32)
    if waves is not None:
        f = f + waves((x, y, z))
    return slices, f


def cylinder(grid: Grid, center: np.ndarray, semi: np.ndarray) -> tuple[Slices, np.ndarray] | None:
    """Normalized field (< 1 inside) of an upright elliptic cylinder: semi-axes x, y and half-height z."""
    center, semi = np.asarray(center, float), np.asarray(semi, float)
    found = grid.region(center - semi * 1.05, center + semi * 1.05)
    if found is None:
        return None
    slices, (x, y, z) = found
    radial = np.sqrt(((x - np.float32(center[0])) / semi[0]) ** 2 + ((y - np.float32(center[1])) / semi[1]) ** 2)
    f = np.maximum(radial, np.abs(z - np.float32(center[2])) / np.float32(semi[2]))
    return slices, f.astype(np.float32)


def tube(grid: Grid, points: np.ndarray, radii: np.ndarray,
         waves: Waves | None = None) -> tuple[Slices, np.ndarray] | None:
    """Normalized distance ``d / r`` (< 1 inside) to a polyline whose radius varies linearly per segment."""
    points, radii = np.asarray(points, float), np.asarray(radii, float)
    reach = radii.max() * 1.2 + 1.0
    found = grid.region(points.min(0) - reach, points.max(0) + reach)
    if found is None:
        return None
    slices, _ = found
    box = grid.sub(slices)
    f = np.full(box.shape, np.inf, np.float32)
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        r = max(ra, rb) * 1.2 + 1.0
        seg = box.region(np.minimum(a, b) - r, np.maximum(a, b) + r)
        if seg is None:
            continue
        s, (x, y, z) = seg
        ab = (b - a).astype(np.float32)
        dx, dy, dz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
        t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
        dist = np.sqrt((dx - t * ab[0]) ** 2 + (dy - t * ab[1]) ** 2 + (dz - t * ab[2]) ** 2)
        np.minimum(f[s], dist / (np.float32(ra) + t * np.float32(rb - ra)), out=f[s])
    if waves is not None:
        f = f + waves(found[1])
    return slices, f


def catmull_rom(control: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample a centripetal-free (uniform) Catmull-Rom spline through ``control`` every ~``step`` mm.

    Returns the points (m, 3) and, for each, the fractional index into ``control`` (to interpolate radii).
    """
    p = np.asarray(control, float)
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out, where = [], []
    for i in range(len(p) - 1):
        p0, p1, p2, p3 = ext[i:i + 4]
        n = max(int(np.ceil(np.linalg.norm(p2 - p1) / step)), 1)
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        pts = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                     + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3)
        out.append(pts)
        where.append(i + t[:, 0])
    out.append(p[-1:])
    where.append(np.array([len(p) - 1.0]))
    return np.vstack(out), np.concatenate(where)


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix of at most ``max_deg`` degrees about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return axis_angle(axis, np.deg2rad(rng.uniform(0, max_deg)))


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix."""
    kx, ky, kz = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -kz, ky], [kz, 0, -kx], [-ky, kx, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
