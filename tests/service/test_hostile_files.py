"""Hostile and degenerate NIfTI files through the real server: each gets a clear 4xx or a correct 200.

One test per kind of file, named after what it sends; after each the server still answers correctly
(``test_server_healthy_after_hostile_files`` runs last in this module).
"""

from __future__ import annotations

import base64
import gzip
import re
import struct
import time

import nibabel as nib
import numpy as np
import pytest

from service.errors import STATUS_BY_CODE

AFFINE = np.diag([-1.2, -1.2, 2.5, 1.0])
SRC_ROW_X = 280  # byte offset of srow_x in a NIfTI-1 header (then srow_y, srow_z: 4 float32 each)


def ct(shape: tuple[int, ...] = (32, 32, 16), dtype: type = np.int16) -> np.ndarray:
    return np.random.default_rng(0).integers(-200, 300, shape).astype(dtype)


def nii(image: nib.Nifti1Image | nib.Nifti2Image, *, gz: bool = True) -> bytes:
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=1) if gz else data


def patched(data: bytes, offset: int, fmt: str, *values: float) -> bytes:
    raw = bytearray(data)
    struct.pack_into(fmt, raw, offset, *values)
    return gzip.compress(bytes(raw))


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["code"] == code, detail
    assert isinstance(detail["message"], str) and len(detail["message"]) > 10
    return detail


def no_internals(message: str, server) -> None:
    """No server path, temp folder, ITK object address or ITK source location in a client message."""
    for leak in (str(server.tmp_dir), "pancreas-req-", "/tmp", "0x", "itk", "ITK", ".cxx", "image.nii"):
        assert leak not in message, (leak, message)


def mask_of(r, tmp_path, name: str = "mask.nii.gz") -> nib.Nifti1Image:
    assert r.status_code == 200, r.text
    path = tmp_path / name
    path.write_bytes(base64.b64decode(r.json()["mask"]))
    return nib.load(str(path))


# ---- 1: resampled size ----------------------------------------------------------------------------------
def test_demo_bundle_refuses_8cube_at_50mm():
    """The issue's 945-byte case, against the demo bundle's plans and the service's default bound."""
    from pancreas.bundle import Bundle, default_bundle_path
    from pancreas.errors import InvalidImageError
    from pancreas.grid import check_grid
    from pancreas.preprocess import PreprocessPlan
    from service.settings import Settings

    bundle = Bundle.load(default_bundle_path())
    plan = PreprocessPlan.from_plans(bundle.plans, bundle.metadata.network.configuration)
    with pytest.raises(InvalidImageError) as info:
        check_grid((8, 8, 8), (50.0, 50.0, 50.0), plan, Settings().grid_limits)
    assert info.value.code == "resampled_too_large"
    assert check_grid((64, 119, 178), (2.0, 0.73, 0.73), plan, Settings().grid_limits)  # a quiz crop passes


@pytest.mark.parametrize("n", [16, 64])
def test_cube_at_50mm_spacing_refused_before_admission(post, client, n):
    """16^3 (8 M voxels at 4 mm: 2000x the input) and 64^3 (512 M voxels) at 50 mm: 413 in well under a second
    of model time; the model never sees them."""
    before = client.get("/metrics").text
    started = time.monotonic()
    r = post(nii(nib.Nifti1Image(ct((n, n, n)), np.diag([-50.0, -50.0, 50.0, 1.0]))))
    assert_error(r, 413, "resampled_too_large")
    assert time.monotonic() - started < 10
    count = re.compile(r'^pancreas_stage_seconds_count\{stage="inference"\} (\S+)$', re.MULTILINE)
    assert count.search(before).group(1) == count.search(client.get("/metrics").text).group(1)


# ---- 3, 5: header fields that crashed the reader -----------------------------------------------------------
@pytest.mark.parametrize("datatype", [0, 999])
def test_header_datatype_unknown(post, server, datatype):
    data = nii(nib.Nifti1Image(ct(), AFFINE), gz=False)
    detail = assert_error(post(patched(data, 70, "<h", datatype)), 422, "unsupported_dtype")
    no_internals(detail["message"], server)


@pytest.mark.parametrize("gz", [True, False])
def test_float32_datatype_with_bitpix_16(post, server, gz):
    data = bytearray(nii(nib.Nifti1Image(ct(dtype=np.float32), AFFINE), gz=False))
    struct.pack_into("<h", data, 72, 16)
    payload = gzip.compress(bytes(data)) if gz else bytes(data)
    detail = assert_error(post(payload), 400, "invalid_header")
    no_internals(detail["message"], server)


# ---- 4, 7: geometry ----------------------------------------------------------------------------------------
def test_sheared_sform_with_orthogonal_qform(post, server):
    image = nib.Nifti1Image(ct(), AFFINE)
    sheared = AFFINE.copy()
    sheared[0, 2] = 0.8  # x moves 0.8 mm per slice: not representable as direction x spacing
    image.set_qform(AFFINE, code=1)
    image.set_sform(sheared, code=2)
    detail = assert_error(post(nii(image)), 422, "invalid_direction")
    assert "shear" in detail["message"]


def test_nan_in_sform_translation(post, server):
    image = nib.Nifti1Image(ct(), AFFINE)
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=2)
    data = nii(image, gz=False)
    assert_error(post(patched(data, SRC_ROW_X + 12, "<f", float("nan"))), 422, "invalid_origin")


def test_qform_and_sform_codes_zero_kept_in_mask(post, tmp_path):
    image = nib.Nifti1Image(ct(), AFFINE)
    image.set_qform(AFFINE, code=0)
    image.set_sform(AFFINE, code=0)
    sent = nib.Nifti1Image.from_bytes(image.to_bytes())
    mask = mask_of(post(nii(image)), tmp_path)
    assert int(mask.header["qform_code"]) == 0 and int(mask.header["sform_code"]) == 0
    np.testing.assert_array_equal(mask.affine, sent.affine)  # what a reader derives from codes 0 (pixdim only)
    assert mask.shape == sent.shape and mask.header.get_zooms() == sent.header.get_zooms()


def test_oblique_sform_kept_exactly_in_mask(post, tmp_path):
    """sform and qform both kept byte for byte (the mask carries the input's own header)."""
    t = np.deg2rad(11.0)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.2, 1.2, 2.5])
    affine[:3, 3] = (12.5, -40.25, 300.0)
    image = nib.Nifti1Image(ct(), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=4)
    sent = nib.Nifti1Image.from_bytes(image.to_bytes()).header
    got = mask_of(post(nii(image)), tmp_path).header
    for key in ("qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d",
                "qoffset_x", "qoffset_y", "qoffset_z", "pixdim", "dim"):
        np.testing.assert_array_equal(got[key], sent[key], err_msg=key)


# ---- 10: degenerate sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "spacing"), [((64, 64, 1), 1.0), ((64, 64, 64), 0.01), ((1, 1, 1), 1.0)],
                         ids=["64x64x1_at_1mm", "64cube_at_0.01mm", "1x1x1_at_1mm"])
def test_volume_smaller_than_one_model_voxel(post, shape, spacing):
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    detail = assert_error(post(nii(nib.Nifti1Image(ct(shape), affine))), 422, "too_small")
    assert "mm" in detail["message"]


def test_single_nonzero_voxel_is_padded_and_predicted(post, tmp_path):
    """The crop to the nonzero box is 1x1x1: it is resampled to one voxel, padded to a patch, predicted."""
    data = np.zeros((32, 32, 16), np.int16)
    data[5, 6, 7] = 100
    mask = mask_of(post(nii(nib.Nifti1Image(data, AFFINE))), tmp_path)
    assert mask.shape == data.shape and set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1, 2}


# ---- 11: NIfTI-2 -------------------------------------------------------------------------------------------
def test_nifti2_file_accepted_like_nifti1(post, tmp_path):
    data = ct((40, 48, 24))
    one = post(nii(nib.Nifti1Image(data, AFFINE)))
    two = post(nii(nib.Nifti2Image(data, AFFINE)))
    m1, m2 = mask_of(one, tmp_path, "one.nii.gz"), mask_of(two, tmp_path, "two.nii.gz")
    assert isinstance(m2, nib.Nifti2Image) and m2.header.sizeof_hdr == 540
    np.testing.assert_array_equal(np.asanyarray(m1.dataobj), np.asanyarray(m2.dataobj))
    np.testing.assert_allclose(m1.affine, m2.affine)
    assert one.json()["probabilities"] == pytest.approx(two.json()["probabilities"], abs=1e-6)


# ---- 6, 9: request shape -----------------------------------------------------------------------------------
def test_multipart_boundary_of_300_characters(client, blob_bytes):
    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ct.nii.gz\"\r\n\r\n"
            .encode() + blob_bytes + f"\r\n--{boundary}--\r\n".encode())
    r = client.post("/v1/predict", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(r, 400, "malformed_multipart")


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nope", 404, "not_found"), ("DELETE", "/v1/predict", 405, "method_not_allowed"),
    ("GET", "/v1/predict", 405, "method_not_allowed"), ("POST", "/healthz", 405, "method_not_allowed")])
def test_unknown_route_or_wrong_method(client, method, path, status, code):
    r = client.request(method, path)
    assert_error(r, status, code)
    if status == 405:
        assert r.headers["Allow"]


def test_every_error_code_documented_with_its_status(repo_root):
    readme = (repo_root / "service" / "README.md").read_text()
    for code, status in STATUS_BY_CODE.items():
        assert re.search(rf"^\| {status} \| `{code}` \|", readme, re.MULTILINE), f"{code} ({status}) not in service/README.md"


def test_server_healthy_after_hostile_files(client, post, blob_bytes, server):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert post(blob_bytes).status_code == 200
    assert list(server.tmp_dir.iterdir()) == []
    assert "internal_error" not in client.get("/metrics").text
