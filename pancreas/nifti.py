"""Geometry: the one place that reads NIfTI files and touches orientation.

We use SimpleITK throughout. SimpleITK indexes images as (x, y, z); ``GetArrayFromImage`` returns
numpy arrays ordered (z, y, x). This module converts between the two exactly once.

``read_volume`` returns a :class:`Volume`: a float32 array in the *canonical* orientation (numpy axis
``m`` runs along world axis ``2 - m`` in the positive LPS direction, i.e. what SimpleITK would give for
an identity direction matrix) together with the original image's header. ``restore`` maps an array
computed in canonical space back onto the original voxel grid, so the written mask has exactly the
input's size, spacing, origin and direction. Oblique images are not resampled: their voxel axes are
matched to the nearest world axes (a permutation plus flips), which is exact and invertible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pancreas.errors import InvalidImageError

logger = logging.getLogger(__name__)

#: Default upper bound on the number of voxels we agree to read (a 1000x1024x1024 CT).
DEFAULT_MAX_VOXELS = 1024 * 1024 * 1000

_SCALAR_REAL_IDS = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64, sitk.sitkFloat32, sitk.sitkFloat64,
}


@dataclass(frozen=True)
class Header:
    """The original image's grid, in SimpleITK (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns are the voxel axes

    @classmethod
    def of(cls, image: sitk.Image) -> Header:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class Orientation:
    """How to get from the original (z, y, x) array to the canonical one: transpose, then flip."""

    transpose: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.transpose)
        axes = tuple(i for i, f in enumerate(self.flip) if f)
        return np.flip(out, axes) if axes else out

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        axes = tuple(i for i, f in enumerate(self.flip) if f)
        out = np.flip(array, axes) if axes else array
        return np.transpose(out, np.argsort(self.transpose))


@dataclass
class Volume:
    """A CT in canonical orientation plus everything needed to write results back."""

    array: np.ndarray  # float32, canonical (z, y, x)
    spacing: tuple[float, float, float]  # canonical numpy order (z, y, x), mm
    header: Header
    orientation: Orientation

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    def restore(self, canonical: np.ndarray) -> np.ndarray:
        """Map a canonical-space array back onto the original (z, y, x) voxel grid."""
        if tuple(canonical.shape) != self.shape:
            raise ValueError(f"array shape {canonical.shape} does not match the volume's {self.shape}")
        return np.ascontiguousarray(self.orientation.from_canonical(canonical))

    def canonical_image(self, canonical: np.ndarray | None = None, dtype: type = np.float32) -> sitk.Image:
        """A SimpleITK image of a canonical-space array (default: the CT) placed correctly in world space.

        Its voxel axes are the original ones permuted/flipped, so its direction is the nearest-to-identity
        version of the input's; used to write nnU-Net training data with consistent array axes.
        """
        arr = self.array if canonical is None else canonical
        image = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=dtype))
        d = np.asarray(self.header.direction, dtype=float).reshape(3, 3)
        spacing_xyz = np.asarray(self.header.spacing, dtype=float)
        size_xyz = np.asarray(self.header.size, dtype=float)
        cols, spac, origin = [], [], np.asarray(self.header.origin, dtype=float)
        for m in (2, 1, 0):  # canonical sitk axis order x, y, z == numpy axes 2, 1, 0
            a = 2 - self.orientation.transpose[m]  # original sitk axis feeding canonical numpy axis m
            sign = -1.0 if self.orientation.flip[m] else 1.0
            cols.append(sign * d[:, a])
            spac.append(spacing_xyz[a])
            if sign < 0:  # index 0 of the flipped axis is the original's last index along a
                origin = origin + d[:, a] * spacing_xyz[a] * (size_xyz[a] - 1)
        image.SetDirection(tuple(np.stack(cols, axis=1).ravel()))
        image.SetSpacing(tuple(float(s) for s in spac))
        image.SetOrigin(tuple(float(o) for o in origin))
        return image

    def to_image(self, canonical: np.ndarray, dtype: type = np.uint8) -> sitk.Image:
        """Build a SimpleITK image with exactly the input's size, spacing, origin and direction."""
        image = sitk.GetImageFromArray(self.restore(canonical).astype(dtype, copy=False))
        return self.header.apply_to(image)


def orientation_of(direction: tuple[float, ...]) -> Orientation:
    """Nearest axis permutation and flips that bring ``direction`` to the identity (LPS)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(np.linalg.det(d)) < 1e-6:
        raise InvalidImageError(f"degenerate direction matrix {direction}", code="invalid_direction")
    world_of_axis = [-1, -1, -1]  # sitk voxel axis -> world axis
    for flat in np.argsort(-np.abs(d), axis=None):  # greedy assignment by magnitude
        w, a = divmod(int(flat), 3)
        if world_of_axis[a] < 0 and w not in world_of_axis:
            world_of_axis[a] = w
    # canonical numpy axis m holds world axis 2 - m; original numpy axis n holds sitk axis 2 - n
    transpose = tuple(2 - world_of_axis.index(2 - m) for m in range(3))
    flip = tuple(bool(d[2 - m, world_of_axis.index(2 - m)] < 0) for m in range(3))
    return Orientation(transpose=transpose, flip=flip)


def _check_information(reader: sitk.ImageFileReader, name: str, max_voxels: int) -> None:
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        return _check_size(size[:3], name, max_voxels)
    if dim != 3:
        raise InvalidImageError(f"{name}: expected a 3D image, got {dim}D with size {size}",
                                code="wrong_dimension")
    if reader.GetNumberOfComponents() != 1 or reader.GetPixelID() not in _SCALAR_REAL_IDS:
        raise InvalidImageError(
            f"{name}: pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())} with "
            f"{reader.GetNumberOfComponents()} component(s) is not a scalar real CT", code="unsupported_dtype")
    spacing = reader.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InvalidImageError(f"{name}: spacing {spacing} must be finite and positive", code="invalid_spacing")
    _check_size(size, name, max_voxels)


def _check_size(size: tuple[int, ...], name: str, max_voxels: int) -> None:
    if min(size) < 1 or int(np.prod(size, dtype=np.int64)) > max_voxels:
        raise InvalidImageError(f"{name}: size {tuple(size)} is outside 1..{max_voxels} voxels",
                                code="too_large" if min(size) >= 1 else "empty_image")


def _check_nifti_raw(path: Path, name: str) -> None:
    """Checks SimpleITK cannot do: it reads NaN/inf voxels as 0 and silently turns a zero pixdim into 1."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        with nib.openers.ImageOpener(str(path)) as f:  # raw header: nibabel's loader "fixes" zero pixdims
            raw = type(img.header).from_fileobj(f, check=False)
    except Exception as exc:  # nibabel raises many types for bad headers; report them uniformly
        raise InvalidImageError(f"{name}: unreadable NIfTI header ({exc})", code="unreadable") from exc
    zooms = tuple(raw["pixdim"][1:4])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InvalidImageError(f"{name}: voxel spacing (pixdim) {tuple(float(z) for z in zooms)} must be finite "
                                "and positive; fix the header", code="invalid_spacing")
    if np.dtype(img.header.get_data_dtype()).kind == "f":
        for zslice in range(img.shape[2]):  # slab-wise, so a big float volume is never held twice
            if not np.all(np.isfinite(np.asanyarray(img.dataobj[:, :, zslice]))):
                raise InvalidImageError(f"{name}: contains NaN or infinite voxel values", code="non_finite")


def read_image(path: str | Path, *, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None) -> sitk.Image:
    """Read a 3D scalar NIfTI after checking its header (dimension, dtype, spacing, size)."""
    path = Path(path)
    name = name or path.name
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InvalidImageError(f"{name}: not a readable NIfTI/ITK image ({_first_line(exc)})",
                                code="unreadable") from exc
    _check_information(reader, name, max_voxels)
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_raw(path, name)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidImageError(f"{name}: image data is truncated or corrupt ({_first_line(exc)})",
                                code="corrupt") from exc
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return image


def canonicalize(image: sitk.Image, *, name: str = "image") -> Volume:
    """Turn a SimpleITK image into a canonical float32 :class:`Volume`; rejects NaN/inf voxels."""
    header = Header.of(image)
    orientation = orientation_of(header.direction)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InvalidImageError(f"{name}: contains NaN or infinite voxel values", code="non_finite")
    # copy: the view aliases the image's buffer, which is freed with ``image``
    canonical = np.array(orientation.to_canonical(array), dtype=np.float32, order="C", copy=True)
    spacing_zyx = tuple(float(s) for s in header.spacing[::-1])
    spacing = tuple(spacing_zyx[i] for i in orientation.transpose)
    return Volume(array=canonical, spacing=spacing, header=header, orientation=orientation)


def read_volume(path: str | Path, *, max_voxels: int = DEFAULT_MAX_VOXELS, name: str | None = None) -> Volume:
    """Read a CT file into canonical orientation. See the module docstring."""
    name = name or Path(path).name
    return canonicalize(read_image(path, max_voxels=max_voxels, name=name), name=name)


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """Write an image (compressed when the name ends in ``.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))
    return path


def same_grid(a: sitk.Image, b: sitk.Image, *, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(exc).__name__
