"""service.uploads in-process: bounded gunzip and NIfTI header checks on real bytes."""

from __future__ import annotations

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from pancreas.errors import InvalidImageError
from service.uploads import decode_upload, header_info

AFFINE = np.diag([-1.0, -1.0, 2.0, 1.0])


def raw_nii(array: np.ndarray, cls: type = nib.Nifti1Image) -> bytes:
    return cls(array, AFFINE).to_bytes()


def decode(tmp_path, data: bytes, max_voxels: int = 1_000_000):
    raw = tmp_path / "upload.bin"
    raw.write_bytes(data)
    return decode_upload(raw, tmp_path, max_voxels=max_voxels, max_bytes=max_voxels * 8 + (1 << 20))


@pytest.fixture
def ct() -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1000, (20, 24, 12)).astype(np.int16)


def test_gzip_nii_and_plain_nii_read_the_same(tmp_path, ct):
    a = decode(tmp_path, gzip.compress(raw_nii(ct)))
    b = decode(tmp_path, raw_nii(ct))
    assert a.shape == b.shape == (12, 24, 20) and np.array_equal(a.array, b.array)


def test_concatenated_gzip_members(tmp_path, ct):
    data = raw_nii(ct)
    volume = decode(tmp_path, gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert np.array_equal(volume.array, decode(tmp_path, data).array)


def test_big_endian_header(tmp_path, ct):
    header = nib.Nifti1Header(endianness=">")
    data = nib.Nifti1Image(ct.astype(">i2"), AFFINE, header=header).to_bytes()
    assert data[:4] == b"\x00\x00\x01\x5c"
    assert header_info(data[:352], max_voxels=10**6).dims == (20, 24, 12)
    assert np.array_equal(decode(tmp_path, data).array, decode(tmp_path, raw_nii(ct)).array)


@pytest.mark.parametrize(("make", "code"), [
    (lambda ct: gzip.compress(raw_nii(ct)) + b"trailing", "corrupt"),
    (lambda ct: gzip.compress(raw_nii(ct) + bytes(4096)), "decompressed_too_large"),
    (lambda ct: zlib.compress(raw_nii(ct)), "not_nifti"),
    (lambda ct: raw_nii(ct)[:100], "not_nifti"),
])
def test_rejected(tmp_path, ct, make, code):
    with pytest.raises(InvalidImageError) as info:
        decode(tmp_path, make(ct))
    assert info.value.code == code


def test_voxel_limit_from_header_alone(tmp_path, ct):
    with pytest.raises(InvalidImageError) as info:
        decode(tmp_path, gzip.compress(raw_nii(ct)), max_voxels=ct.size - 1)
    assert info.value.code == "too_large"


def test_nifti2_reads_like_nifti1(tmp_path, ct):
    a = decode(tmp_path, gzip.compress(raw_nii(ct, nib.Nifti2Image)))
    b = decode(tmp_path, raw_nii(ct))
    assert a.shape == b.shape and np.array_equal(a.array, b.array) and a.spacing == b.spacing
    assert a.header == b.header and a.nifti.sizeof_hdr == 540
