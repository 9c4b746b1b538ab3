"""A strict server (queue of 1, API key): bursts get 503 + Retry-After, auth, graceful shutdown."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pancreas.testing import blob_ct, nifti_bytes, post_ct, running_server

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def strict(tiny_bundle, tmp_path_factory):
    with running_server(tiny_bundle, tmp_path_factory.mktemp("strict"), queue_size=1, api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def big_bytes(tmp_path_factory):
    """A CT that takes the tiny model a while (many sliding-window patches)."""
    return nifti_bytes(blob_ct(shape=(64, 96, 96), spacing_xyz=(1.5, 1.5, 2.0), seed=3),
                            tmp_path_factory.mktemp("big"))


AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": f"Basic {API_KEY}"}])
def test_api_key_required(strict, blob_bytes, headers):
    with strict.client() as c:
        for r in (post_ct(c, blob_bytes, headers=headers), c.get("/v1/model", headers=headers)):
            assert r.status_code == 401, r.text
            assert r.json()["detail"]["code"] == "unauthorized"
            assert r.headers["WWW-Authenticate"] == "Bearer"


def test_api_key_accepted(strict, blob_bytes):
    with strict.client() as c:
        assert post_ct(c, blob_bytes, headers=AUTH).status_code == 200
        assert c.get("/v1/model", headers=AUTH).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_burst_over_queue_size(strict, big_bytes, blob_bytes):
    def one(_: int) -> httpx.Response:
        with strict.client() as c:
            return post_ct(c, big_bytes, headers=AUTH)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, [r.text for r in responses]
    assert 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.json()["detail"]["code"] == "queue_full"
            assert int(r.headers["Retry-After"]) >= 1
    with strict.client() as c:
        assert c.get("/healthz").status_code == 200
        assert post_ct(c, blob_bytes, headers=AUTH).status_code == 200
        assert 'pancreas_errors_total{code="queue_full"}' in c.get("/metrics").text


def test_graceful_shutdown_finishes_in_flight_request(strict, big_bytes):
    """SIGTERM while a request runs: the request still gets its 200, then the process exits."""
    result: dict[str, httpx.Response] = {}

    def request() -> None:
        with strict.client() as c:
            result["r"] = post_ct(c, big_bytes, headers=AUTH)

    thread = threading.Thread(target=request)
    thread.start()
    with strict.client() as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "pancreas_in_progress 1.0" not in c.get("/metrics").text:
            time.sleep(0.02)
    code = strict.stop()
    thread.join(60)
    assert result["r"].status_code == 200, result["r"].text
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, so -15 is a clean exit
    assert code in (0, -signal.SIGTERM), strict.log_text()
    assert list(strict.tmp_dir.iterdir()) == []
