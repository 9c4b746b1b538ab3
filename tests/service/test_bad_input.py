"""Every kind of bad upload gets a specific 4xx with a stable code; the server survives all of them."""

from __future__ import annotations

import gzip
import struct
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import SimpleITK as sitk

AFFINE = np.diag([-1.2, -1.2, 2.5, 1.0])


def nii(array: np.ndarray, *, gz: bool = True) -> bytes:
    data = nib.Nifti1Image(array, AFFINE).to_bytes()
    return gzip.compress(data, compresslevel=1) if gz else data


def ct(dtype: type = np.int16) -> np.ndarray:
    return np.random.default_rng(0).integers(-1000, 1000, (32, 32, 16)).astype(dtype)


def with_pixdim(value: float) -> bytes:
    raw = bytearray(nii(ct(), gz=False))
    struct.pack_into("<f", raw, 80, value)  # pixdim[1] (x spacing)
    return gzip.compress(bytes(raw))


def huge_header() -> bytes:
    raw = bytearray(nii(ct(), gz=False)[:352])
    struct.pack_into("<8h", raw, 40, 3, 4096, 4096, 4096, 1, 1, 1, 1)
    return gzip.compress(bytes(raw))


def gzip_bomb(zeros_mb: int = 64) -> bytes:
    """A valid small header followed by far more decompressed data than it declares."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [z.compress(nii(np.zeros((16, 16, 16), np.int16), gz=False))]
    block = bytes(1 << 20)
    parts += [z.compress(block) for _ in range(zeros_mb)]
    return b"".join(parts) + z.flush()


def png() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.png"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(path))
        return path.read_bytes()


def non_finite(value: float) -> bytes:
    a = ct(np.float32)
    a[3, 4, 5] = value
    return nii(a)


def rgb() -> bytes:
    return nii(np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))


def random_bytes() -> bytes:
    return b"\x00" + np.random.default_rng(1).bytes(10_000)


CASES = {  # name -> (payload factory, status, code)
    "empty": (lambda: b"", 400, "empty_file"),
    "random_bytes": (random_bytes, 400, "not_nifti"),
    "truncated_gzip": (lambda: nii(ct())[:2000], 400, "truncated_gzip"),
    "truncated_nii": (lambda: nii(ct(), gz=False)[:5000], 400, "truncated"),
    "png": (png, 400, "not_nifti"),
    "plain_text": (lambda: b"this is not a CT scan\n" * 50, 400, "not_nifti"),
    "image_2d": (lambda: nii(np.zeros((32, 32), np.int16)), 422, "wrong_dimension"),
    "image_4d": (lambda: nii(np.zeros((16, 16, 8, 2), np.int16)), 422, "wrong_dimension"),
    "nan": (lambda: non_finite(np.nan), 422, "non_finite"),
    "inf": (lambda: non_finite(-np.inf), 422, "non_finite"),
    "zero_spacing": (lambda: with_pixdim(0.0), 422, "invalid_spacing"),
    "negative_spacing": (lambda: with_pixdim(-1.5), 422, "invalid_spacing"),
    "huge_header": (huge_header, 413, "too_large"),
    "gzip_bomb": (gzip_bomb, 413, "decompressed_too_large"),
    "complex": (lambda: nii(ct(np.complex64)), 422, "unsupported_dtype"),
    "rgb": (rgb, 422, "unsupported_dtype"),
}


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["code"] == code, detail
    assert isinstance(detail["message"], str) and len(detail["message"]) > 10


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file(name, post):
    factory, status, code = CASES[name]
    assert_error(post(factory()), status, code)


def test_gzip_bomb_does_not_exhaust_memory(post, server):
    proc = psutil.Process(server.process.pid)
    before = proc.memory_info().rss
    bomb = gzip_bomb(512)
    assert len(bomb) < 4_000_000  # 512 MiB of zeros behind a 16^3 header
    assert_error(post(bomb), 413, "decompressed_too_large")
    assert proc.memory_info().rss - before < 64 * 1024 * 1024


def test_missing_file_field(post, blob_bytes):
    assert_error(post(blob_bytes, field="image"), 422, "missing_file")


def test_empty_form_field(client):
    assert_error(client.post("/v1/predict", files={"file": (None, b"")}), 400, "empty_file")


def test_urlencoded_form(client):
    assert_error(client.post("/v1/predict", data={"file": "x"}), 415, "unsupported_media_type")


@pytest.mark.parametrize("ctype", ["application/octet-stream", "application/json", "text/plain", None])
def test_wrong_content_type(client, blob_bytes, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    assert_error(client.post("/v1/predict", content=blob_bytes, headers=headers), 415, "unsupported_media_type")


def test_upload_too_large_by_content_length(post, limits):
    assert_error(post(b"\x1f\x8b" + bytes(limits["max_upload_bytes"] + 1)), 413, "upload_too_large")


def test_upload_too_large_while_streaming(client, limits):
    """Chunked upload (no Content-Length): the limit is enforced while the body streams in."""
    boundary = b"xyzzy"

    def body():
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.nii.gz"\r\n\r\n'
        for _ in range(limits["max_upload_bytes"] // (1 << 20) + 2):
            yield bytes(1 << 20)
        yield b"\r\n--" + boundary + b"--\r\n"

    r = client.post("/v1/predict", content=body(),
                    headers={"Content-Type": "multipart/form-data; boundary=xyzzy"})
    assert_error(r, 413, "upload_too_large")


def test_malformed_multipart(client):
    r = client.post("/v1/predict", content=b"--b\r\nnot a header line",
                    headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and r.json()["detail"]["code"] == "malformed_multipart", r.text


def test_bad_query(post, blob_bytes):
    r = post(blob_bytes, params={"format": "xml"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_request"


def test_server_survives_bad_input(client, post, blob_bytes, server):
    """Runs after the cases above (file order): still alive, still correct, no temp files left."""
    assert client.get("/healthz").json() == {"status": "ok"}
    r = post(blob_bytes)
    assert r.status_code == 200, r.text
    assert list(server.tmp_dir.iterdir()) == []
    metrics = client.get("/metrics").text
    assert 'pancreas_errors_total{code="not_nifti"}' in metrics
    assert 'pancreas_errors_total{code="decompressed_too_large"}' in metrics
