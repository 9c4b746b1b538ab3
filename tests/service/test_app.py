"""The app in-process (Starlette TestClient runs the real lifespan and engine): readiness and timeouts."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from pancreas.testing import blob_ct, nifti_bytes
from service.main import create_app
from service.settings import Settings


def wait_for(client: TestClient, path: str, status: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(path)
        if r.status_code == status:
            return r
        time.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}")


def test_unloadable_bundle_is_not_ready(tmp_path, blob_bytes):
    app = create_app(Settings(bundle=tmp_path / "no-such-bundle", tmp_dir=tmp_path))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = wait_for(c, "/readyz", 503)
        deadline = time.monotonic() + 30
        while r.json()["status"] == "loading" and time.monotonic() < deadline:
            r = c.get("/readyz")
        assert r.json()["status"] == "failed" and "no-such-bundle" not in r.json()["detail"]
        assert "Retry-After" not in r.headers  # a permanent failure: retrying does not help
        for r in (c.post("/v1/predict", files={"file": ("ct.nii.gz", blob_bytes)}), c.get("/v1/model")):
            assert r.status_code == 503 and r.json()["detail"]["code"] == "model_failed"
            assert "Retry-After" not in r.headers and str(tmp_path) not in r.text


def test_request_timeout(tiny_bundle, tmp_path):
    big = nifti_bytes(blob_ct(shape=(64, 96, 96), spacing_xyz=(1.5, 1.5, 2.0), seed=3), tmp_path)
    settings = Settings(bundle=tiny_bundle, request_timeout_s=0.05, num_threads=1, tmp_dir=tmp_path / "t")
    (tmp_path / "t").mkdir()
    with TestClient(create_app(settings)) as c:
        wait_for(c, "/readyz", 200)
        r = c.post("/v1/predict", files={"file": ("ct.nii.gz", big)})
        assert r.status_code == 504 and r.json()["detail"]["code"] == "timeout", r.text
        assert c.get("/healthz").status_code == 200
        deadline = time.monotonic() + 60  # the running job finishes and frees its slot
        while "pancreas_in_progress 0.0" not in c.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "pancreas_queue_depth 0.0" in c.get("/metrics").text
    assert list((tmp_path / "t").iterdir()) == []


def test_mirror_axes_setting_reads_axes_and_refuses_bad_ones(monkeypatch) -> None:
    """``PANCREAS_MIRROR_AXES``: ``auto`` follows the bundle, ``2`` flips one axis; a bad axis is a clear error."""
    from pydantic import ValidationError

    for text, expected in (("auto", None), ("", None), ("2", (2,)), ("[1, 2]", (1, 2)), ("0,1,2", (0, 1, 2))):
        monkeypatch.setenv("PANCREAS_MIRROR_AXES", text)
        assert Settings().mirror_axes == expected, text
        assert Settings().engine_config().mirror_axes == expected
    for bad in ("3", "1,1", "x", "-1"):
        monkeypatch.setenv("PANCREAS_MIRROR_AXES", bad)
        with pytest.raises(ValidationError, match="mirror axes"):
            Settings()
    monkeypatch.delenv("PANCREAS_MIRROR_AXES")
    assert Settings(mirror_axes=[1, 2]).engine_config().mirror_axes == (1, 2)  # what `pancreas serve` passes
    with pytest.raises(ValidationError, match="mirror axes"):
        Settings(mirror_axes=[5])


def test_scales_setting_reads_factors_and_refuses_bad_ones(monkeypatch) -> None:
    """``PANCREAS_SCALES``: ``auto`` follows the bundle, ``1,1.25`` two passes; a bad factor is a clear error."""
    from pydantic import ValidationError

    for text, expected in (("auto", None), ("", None), ("1,1.25", (1.0, 1.25)), ("[1, 1.25]", (1.0, 1.25)),
                           ("1", (1.0,))):
        monkeypatch.setenv("PANCREAS_SCALES", text)
        assert Settings().scales == expected, text
        assert Settings().engine_config().scales == expected
    for bad in ("0", "1,9", "fast"):
        monkeypatch.setenv("PANCREAS_SCALES", bad)
        with pytest.raises(ValidationError, match="scales"):
            Settings()
