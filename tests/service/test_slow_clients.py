"""Slow and stalled clients, shutdown, load failure, cancelled jobs and 500s, each against a real server.

Stalled uploads are raw sockets that send the request headers and part of the body, then nothing.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from pancreas.testing import blob_ct, free_port, nifti_bytes, post_ct, running_server

QUEUE = 2
READ_TIMEOUT_S = 2.0
UPLOAD_TIMEOUT_S = 4.0
BOUNDARY = "stall"


def stalled_upload(url: str, first: bytes = bytes(1000), total: int = 10_000_000) -> socket.socket:
    """Send the headers of a ``total``-byte upload and its first bytes; then stall."""
    preamble = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ct.nii.gz\"\r\n"
                "Content-Type: application/gzip\r\n\r\n").encode()
    length = len(preamble) + total + len(f"\r\n--{BOUNDARY}--\r\n")
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {length}\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode() + preamble + first)
    return sock


def response(sock: socket.socket, timeout: float = 30.0) -> http.client.HTTPResponse:
    sock.settimeout(timeout)
    r = http.client.HTTPResponse(sock)
    r.begin()
    r.body = r.read() if r.getheader("Content-Length") else b""
    return r


def code_of(r: http.client.HTTPResponse) -> str:
    return json.loads(r.body)["detail"]["code"]


@pytest.fixture(scope="module")
def stalling(tiny_bundle, tmp_path_factory):
    with running_server(tiny_bundle, tmp_path_factory.mktemp("stalling"), queue_size=QUEUE,
                         upload_read_timeout_s=READ_TIMEOUT_S, upload_timeout_s=UPLOAD_TIMEOUT_S) as srv:
        yield srv


def test_six_stalled_uploads_against_queue_of_two(stalling):
    """Admission before the body: 4 get 503 at once without a temp folder; the 2 admitted get 408 once the
    per-read timeout passes; nothing is left behind."""
    socks = [stalled_upload(stalling.url) for _ in range(6)]
    answered, deadline = [], time.monotonic() + READ_TIMEOUT_S * 0.75
    while len(answered) < 4 and time.monotonic() < deadline:
        ready, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.05)
        answered += ready
    folders = len(list(stalling.tmp_dir.iterdir()))
    assert len(answered) == 4, f"{len(answered)} of 6 stalled uploads were answered before the read timeout"
    assert folders <= QUEUE
    for s in answered:
        r = response(s)
        assert r.status == 503 and code_of(r) == "queue_full" and int(r.getheader("Retry-After")) >= 1
    started = time.monotonic()
    for s in (s for s in socks if s not in answered):
        r = response(s, timeout=READ_TIMEOUT_S * 5)
        assert r.status == 408 and code_of(r) == "upload_timeout", r.body
        assert r.getheader("Connection") == "close"
    assert time.monotonic() - started < READ_TIMEOUT_S * 3
    for s in socks:
        s.close()
    assert list(stalling.tmp_dir.iterdir()) == []


def test_trickling_upload_hits_the_total_upload_timeout(stalling):
    """100 bytes every 0.5 s never trips the per-read timeout; the whole-upload timeout ends it."""
    sock = stalled_upload(stalling.url, first=b"")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            try:
                sock.sendall(bytes(100))
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        r = response(sock, timeout=UPLOAD_TIMEOUT_S * 4)
    finally:
        stop.set()
        thread.join(5)
        sock.close()
    elapsed = time.monotonic() - started
    assert r.status == 408 and code_of(r) == "upload_timeout"
    assert UPLOAD_TIMEOUT_S - 0.5 <= elapsed < UPLOAD_TIMEOUT_S * 2.5, elapsed


def test_server_answers_after_stalled_clients(stalling, blob_bytes):
    with stalling.client() as c:
        assert post_ct(c, blob_bytes).status_code == 200
        assert "pancreas_queue_depth 0.0" in c.get("/metrics").text


def test_sigterm_with_two_stalled_uploads_exits_at_once(tiny_bundle, tmp_path):
    """Stalled uploads do not hold shutdown for their timeouts (60 s here) nor GRACEFUL_SHUTDOWN_S."""
    with running_server(tiny_bundle, tmp_path, queue_size=QUEUE, upload_read_timeout_s=60,
                         upload_timeout_s=120, graceful_shutdown_s=60) as srv:
        socks = [stalled_upload(srv.url) for _ in range(QUEUE)]
        deadline = time.monotonic() + 10
        while len(list(srv.tmp_dir.iterdir())) < QUEUE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(srv.tmp_dir.iterdir())) == QUEUE  # both admitted and receiving
        started = time.monotonic()
        srv.stop(timeout=60)
        took = time.monotonic() - started
        for s in socks:
            r = response(s, timeout=5)
            assert r.status == 503 and code_of(r) == "shutting_down"
            s.close()
        assert took < 10, f"shutdown took {took:.1f} s"
        assert list(srv.tmp_dir.iterdir()) == []


# ---- 8: a model that cannot load ---------------------------------------------------------------------------
def test_readyz_and_predict_after_model_load_failure(tiny_bundle, tmp_path, blob_bytes):
    """The tiny bundle has no ONNX artifact: the onnxruntime backend cannot load it. Permanent failure."""
    with running_server(tiny_bundle, tmp_path, wait=False, backend="onnxruntime") as srv:
        deadline, r = time.monotonic() + 120, None
        with srv.client() as c:
            while time.monotonic() < deadline:
                try:
                    r = c.get("/readyz")
                except Exception:  # noqa: BLE001 - not listening yet
                    time.sleep(0.2)
                    continue
                if r.json()["status"] != "loading":
                    break
                assert r.status_code == 503 and r.headers["Retry-After"]
                time.sleep(0.2)
            assert r is not None and r.status_code == 503 and r.json()["status"] == "failed", r and r.text
            assert "Retry-After" not in r.headers
            answers = [r, post_ct(c, blob_bytes), c.get("/v1/model")]
        for a in answers:  # no path of any kind (the bundle's, a temp folder, a library's source file)
            assert str(tiny_bundle) not in a.text and str(tmp_path) not in a.text and ".py" not in a.text, a.text
        for a in answers[1:]:
            assert a.status_code == 503 and a.json()["detail"]["code"] == "model_failed"
            assert "Retry-After" not in a.headers
        assert str(tiny_bundle) in srv.log_text() or "onnx" in srv.log_text().lower()  # the log has it all


# ---- 12: a request that times out stops its job ------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory):
    """The tiny network at 1 mm: a 64x128x128 CT is 125 patches at step 0.25, seconds of work per request."""
    from pancreas.testing import make_random_bundle, tiny_plans

    root = tmp_path_factory.mktemp("slow") / "random-1mm"
    make_random_bundle(root, seed=0, plans=tiny_plans(spacing=(1.0, 1.0, 1.0)))
    return root


def metric(client, name: str) -> float:
    line = next(ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def test_request_that_times_out_frees_the_model(slow_bundle, tmp_path):
    big = nifti_bytes(blob_ct(shape=(64, 128, 128), spacing_xyz=(1.0, 1.0, 1.0), seed=4), tmp_path)
    with running_server(slow_bundle, tmp_path / "srv", request_timeout_s=1.5, step_size=0.25, batch_size=1,
                         warmup=False) as srv, srv.client() as c:
        r = post_ct(c, big)
        assert r.status_code == 504 and r.json()["detail"]["code"] == "timeout", r.text
        timed_out = time.monotonic()
        while (metric(c, "pancreas_in_progress") or metric(c, "pancreas_queue_depth")) \
                and time.monotonic() - timed_out < 30:
            time.sleep(0.02)
        freed = time.monotonic() - timed_out
        assert metric(c, "pancreas_in_progress") == 0 and metric(c, "pancreas_queue_depth") == 0
        # 125 patches of ~0.1 s or more each would keep the model for > 10 s; one patch batch is far less
        assert freed < 3.0, f"the model was busy {freed:.1f} s after the 504"


# ---- a 500 keeps the connection ----------------------------------------------------------------------------
def test_internal_error_answers_and_keeps_the_connection(tiny_bundle, tmp_path):
    """An unexpected exception (a route added for the test raises) is a 500 with the documented body, twice
    on one keep-alive connection, served by the real app under a real uvicorn."""
    import uvicorn

    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(bundle=tiny_bundle, tmp_dir=tmp_path, warmup=False))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(2):
            conn.request("GET", "/boom")
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == 500 and body["detail"]["code"] == "internal_error", body
            assert "a bug" not in body["detail"]["message"]
        conn.request("GET", "/healthz")  # the same connection still works
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        server.should_exit = True
        thread.join(30)
