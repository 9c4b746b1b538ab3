"""NIfTI headers as scanners and converters write them: axis orders, flips, gantry tilts, storage types.

A phantom is generated in the canonical layout (identity direction, LPS). A :class:`HeaderSpec` then
stores the same voxels under another direction matrix: the array is permuted/flipped with
:class:`pancreas.nifti.Orientation` and the origin moved, so non-oblique variants put every voxel at
exactly the same world position, and :func:`pancreas.nifti.read_volume` gives back the canonical array.
Oblique variants tilt the grid about the volume centre (as a gantry tilt does): the canonical array is
still the same, the world-space anatomy is rotated by the tilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pancreas.nifti import Orientation, orientation_of
from pancreas.phantoms.geometry import axis_angle


def _signed_perm(rng: np.random.Generator) -> np.ndarray:
    perms = [(1, 0, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0), (2, 0, 1)]
    p = np.eye(3)[:, list(perms[rng.integers(len(perms))])]
    return p * rng.choice([-1.0, 1.0], 3)


def _oblique(rng: np.random.Generator) -> np.ndarray:
    base = DIRECTIONS["RAS" if rng.random() < 0.6 else "LPS"](rng)
    axis = np.array([1.0, 0, 0]) if rng.random() < 0.6 else rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(5, 15)) * rng.choice([-1, 1])
    return axis_angle(axis, angle) @ base


#: direction-matrix kinds (columns are the voxel axes in LPS world coordinates)
DIRECTIONS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "LPS": lambda rng: np.eye(3),
    "RAS": lambda rng: np.diag([-1.0, -1.0, 1.0]),
    "LAS": lambda rng: np.diag([1.0, -1.0, 1.0]),
    "permuted": _signed_perm,
    "oblique": _oblique,
}
DIRECTION_WEIGHTS = {"LPS": 0.2, "RAS": 0.3, "LAS": 0.1, "permuted": 0.15, "oblique": 0.25}


@dataclass(frozen=True)
class Storage:
    """How HU are stored on disk: numpy dtype and NIfTI scl_slope/scl_inter (None: no scaling)."""

    dtype: type
    slope_inter: tuple[float, float] | None = None

    def encode(self, hu: np.ndarray) -> np.ndarray:
        if self.slope_inter is None:
            return hu.astype(self.dtype) if np.dtype(self.dtype).kind == "f" else np.rint(hu).astype(self.dtype)
        slope, inter = self.slope_inter
        return np.rint((hu - inter) / slope).astype(self.dtype)


#: storage kinds; SimpleITK and nibabel both apply scl_slope/scl_inter when reading
STORAGES: dict[str, Storage] = {
    "int16": Storage(np.int16),
    "float32": Storage(np.float32),
    "uint16_scaled": Storage(np.uint16, (1.0, -1024.0)),
}
STORAGE_WEIGHTS = {"int16": 0.5, "float32": 0.25, "uint16_scaled": 0.25}


@dataclass(frozen=True)
class HeaderSpec:
    kind: str  # a DIRECTIONS key
    direction: np.ndarray  # 3x3
    storage: str  # a STORAGES key

    @property
    def orientation(self) -> Orientation:
        return orientation_of(tuple(self.direction.ravel()))


def canonical_header() -> HeaderSpec:
    return HeaderSpec("LPS", np.eye(3), "int16")


def draw_header(rng: np.random.Generator) -> HeaderSpec:
    """A scanner-like header: direction kind and storage type drawn with DIRECTION/STORAGE_WEIGHTS."""
    kinds, storages = list(DIRECTION_WEIGHTS), list(STORAGE_WEIGHTS)
    kind = kinds[rng.choice(len(kinds), p=list(DIRECTION_WEIGHTS.values()))]
    storage = storages[rng.choice(len(storages), p=list(STORAGE_WEIGHTS.values()))]
    return HeaderSpec(kind, DIRECTIONS[kind](rng), storage)


#: header mode of ``make_case``/``pancreas synth`` -> header drawer
HEADER_MODES: dict[str, Callable[[np.random.Generator], HeaderSpec]] = {
    "varied": draw_header,
    "canonical": lambda rng: canonical_header(),
}


def place(canonical: np.ndarray, spacing_zyx: tuple[float, float, float], origin_xyz: np.ndarray,
          spec: HeaderSpec, *, dtype: type | None = None) -> sitk.Image:
    """A SimpleITK image of ``canonical`` (identity-direction grid at ``origin_xyz``) stored under ``spec``.

    The pixel type is ``dtype`` (default: the array's). Scaled storage is applied only when writing.
    """
    orient = spec.orientation
    stored = np.ascontiguousarray(orient.from_canonical(canonical), dtype=dtype or canonical.dtype)
    image = sitk.GetImageFromArray(stored)
    perm = np.rint(_nearest_signed_perm(orient))  # voxel axis -> world axis (signed), no tilt
    sp_xyz = np.asarray(spacing_zyx[::-1], float)
    size_xyz = np.asarray(canonical.shape[::-1], float)
    origin = np.asarray(origin_xyz, float).copy()
    for a in range(3):
        w = int(np.argmax(np.abs(perm[:, a])))
        if perm[w, a] < 0:  # index 0 of a flipped axis is the canonical grid's far end
            origin[w] += sp_xyz[w] * (size_xyz[w] - 1)
    spacing = [sp_xyz[int(np.argmax(np.abs(perm[:, a])))] for a in range(3)]
    tilt = spec.direction @ perm.T  # the rotation on top of the signed permutation
    center = np.asarray(origin_xyz, float) + sp_xyz * (size_xyz - 1) / 2
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in center + tilt @ (origin - center)])
    image.SetDirection([float(d) for d in spec.direction.ravel()])
    return image


def _nearest_signed_perm(orient: Orientation) -> np.ndarray:
    """The signed permutation (columns: sitk voxel axes) that ``orient`` undoes."""
    perm = np.zeros((3, 3))
    for m in range(3):  # canonical numpy axis m holds world axis 2 - m, from original numpy axis t
        t = orient.transpose[m]
        perm[2 - m, 2 - t] = -1.0 if orient.flip[m] else 1.0
    return perm
