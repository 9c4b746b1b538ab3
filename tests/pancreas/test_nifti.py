"""Geometry module: canonical orientation, exact write-back, and input validation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.errors import InvalidImageError
from pancreas.nifti import canonicalize, orientation_of, read_volume, same_grid, write_image

RNG = np.random.default_rng(0)
CANON = RNG.normal(size=(5, 6, 7)).astype(np.float32)  # canonical (z, y, x)
CANON_SPACING = (2.0, 0.8, 0.7)  # numpy order


def _image(transpose: tuple[int, int, int], flip: tuple[bool, bool, bool], tilt_deg: float = 0.0) -> sitk.Image:
    """The CANON volume stored with another axis order / flips (and an optional oblique tilt)."""
    arr = np.flip(CANON, [m for m in range(3) if flip[m]]) if any(flip) else CANON
    stored = np.ascontiguousarray(np.transpose(arr, transpose))  # stored numpy axis n = canonical axis transpose[n]
    img = sitk.GetImageFromArray(stored)
    d = np.zeros((3, 3))
    spacing = [0.0] * 3
    for n, m in enumerate(transpose):
        a, w = 2 - n, 2 - m  # sitk axis of stored numpy axis n; world axis of canonical axis m
        d[w, a] = -1.0 if flip[m] else 1.0
        spacing[a] = CANON_SPACING[m]
    t = np.deg2rad(tilt_deg)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    img.SetDirection(tuple((rot @ d).ravel()))
    img.SetSpacing(spacing)
    img.SetOrigin((12.5, -40.0, 300.25))
    return img


VARIANTS = [((0, 1, 2), (False, False, False)), ((0, 1, 2), (False, True, True)),  # LPS, RAS
            ((2, 0, 1), (True, False, True)), ((1, 2, 0), (False, False, False)), ((0, 2, 1), (True, True, False))]


@pytest.mark.parametrize("transpose,flip", VARIANTS)
@pytest.mark.parametrize("tilt", [0.0, 12.0])
def test_canonical_array_is_header_independent(tmp_path: Path, transpose, flip, tilt) -> None:
    path = write_image(_image(transpose, flip, tilt), tmp_path / "ct.nii.gz")
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array, CANON)
    assert vol.spacing == pytest.approx(CANON_SPACING)
    assert orientation_of(sitk.ReadImage(str(path)).GetDirection()) == vol.orientation


@pytest.mark.parametrize("transpose,flip", VARIANTS)
def test_mask_written_back_on_exact_input_grid(tmp_path: Path, transpose, flip) -> None:
    path = write_image(_image(transpose, flip, tilt_deg=7.0), tmp_path / "ct.nii.gz")
    original = sitk.ReadImage(str(path))  # the header as stored (NIfTI keeps float32 precision)
    vol = read_volume(path)
    mask = (vol.array > 0.5).astype(np.uint8)
    out = vol.to_image(mask)
    assert out.GetSize() == original.GetSize()
    assert out.GetSpacing() == original.GetSpacing()
    assert out.GetOrigin() == original.GetOrigin()
    assert out.GetDirection() == original.GetDirection()
    # the same voxels, in the input's own array layout
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), (sitk.GetArrayFromImage(original) > 0.5))
    reread = sitk.ReadImage(str(write_image(out, tmp_path / "mask.nii.gz")))
    assert same_grid(reread, original, tol=0.0)


def test_canonical_image_keeps_world_positions() -> None:
    original = _image((2, 0, 1), (True, False, True), tilt_deg=10.0)

    vol = canonicalize(original)
    canon_img = vol.canonical_image()
    stored = sitk.GetArrayFromImage(original)
    for idx in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:  # canonical (x, y, z)
        world = canon_img.TransformIndexToPhysicalPoint(idx)
        src = original.TransformPhysicalPointToIndex(world)
        assert vol.array[idx[2], idx[1], idx[0]] == stored[src[2], src[1], src[0]]
    assert same_grid(canon_img, vol.canonical_image())


def _nifti(tmp_path: Path, data: np.ndarray, name: str = "x.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "wrong_dimension_2d": _nifti(tmp_path, np.zeros((8, 9), np.int16), "2d.nii.gz"),
        "wrong_dimension_4d": _nifti(tmp_path, np.zeros((4, 4, 4, 2), np.int16), "4d.nii.gz"),
        "unsupported_dtype": _nifti(tmp_path, np.zeros((4, 4, 4), np.complex64), "cplx.nii.gz"),
        "non_finite": _nifti(tmp_path, np.array([[[np.nan, 1.0], [np.inf, 0.0]]] * 2, np.float32), "nan.nii.gz"),
    }
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    files["unsupported_dtype_rgb"] = write_image(rgb, tmp_path / "rgb.nii.gz")
    plain = _nifti(tmp_path, np.ones((4, 5, 6), np.int16), "zero.nii")
    raw = bytearray(plain.read_bytes())
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1] = 0
    plain.write_bytes(bytes(raw))
    files["invalid_spacing"] = plain
    good = _nifti(tmp_path, np.ones((16, 16, 16), np.int16), "good.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    files["corrupt_or_unreadable"] = tmp_path / "trunc.nii.gz"
    (tmp_path / "noise.nii.gz").write_bytes(RNG.bytes(4096))
    files["unreadable"] = tmp_path / "noise.nii.gz"
    (tmp_path / "text.nii").write_text("hello, this is not an image\n" * 20)
    files["not_nifti_text"] = tmp_path / "text.nii"
    return files


def test_bad_inputs_raise_specific_codes(tmp_path: Path) -> None:
    for expected, path in _bad_files(tmp_path).items():
        with pytest.raises(InvalidImageError) as info:
            read_volume(path)
        code = info.value.code
        assert expected.startswith(code) or code in expected, (path.name, code, str(info.value))
        assert path.name in str(info.value)


def test_size_limit_checked_from_header(tmp_path: Path) -> None:
    path = _nifti(tmp_path, np.zeros((20, 20, 20), np.int16))
    with pytest.raises(InvalidImageError, match="outside 1..7999 voxels") as info:
        read_volume(path, max_voxels=7999)
    assert info.value.code == "too_large"
    assert read_volume(path, max_voxels=8000).shape == (20, 20, 20)


def test_scaled_uint16_reads_as_hu(tmp_path: Path) -> None:
    hu = RNG.integers(-1000, 1500, size=(6, 7, 8)).astype(np.int16)
    img = nib.Nifti1Image((hu.astype(np.int32) + 1024).astype(np.uint16), np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    path = tmp_path / "u16.nii.gz"
    nib.save(img, str(path))
    with gzip.open(path) as f:
        assert f.read(4)  # a real gzip file
    vol = read_volume(path)
    np.testing.assert_allclose(np.sort(vol.array.ravel()), np.sort(hu.astype(np.float32).ravel()))
