"""Locust load test for ``pancreas serve``: POST phantom CT volumes to ``/v1/predict``.

Payloads are the ``*_0000.nii.gz`` files under ``$PANCREAS_LOCUST_PAYLOADS`` (``pancreas bench load`` makes
one crop-size and one full-size phantom once and points this variable at them). A file whose path contains
``full`` is reported as ``/v1/predict full``, otherwise as ``/v1/predict crop``, so locust's CSV has
percentiles per size plus the aggregate.

``503`` (queue full, with ``Retry-After``) is recorded as a failure whose message starts with
``503 queue full``, so it is counted apart from other errors; the user then waits ``Retry-After`` seconds
(capped by ``$PANCREAS_LOCUST_MAX_BACKOFF``, default 2) before its next request.

Run headless (CPU service on this machine)::

    PANCREAS_LOCUST_PAYLOADS=/tmp/payloads locust -f benchmarks/locustfile.py --headless \\
        -u 4 -r 2 -t 60s --csv /tmp/load --host http://127.0.0.1:8000

``SlowUploadUser`` (only when ``$PANCREAS_LOCUST_SLOW_USERS`` >= 1, that many of them, and named on the
command line, e.g. ``locust ... PredictUser SlowUploadUser``) is a slow client on a raw socket: it either sends the
smallest payload in 64 KiB pieces ``$PANCREAS_LOCUST_SLOW_CHUNK_S`` apart (``/v1/predict slow``; 200 or 503
expected), or sends half of it and stalls ``$PANCREAS_LOCUST_STALL_S`` (default 20, more than the service's
upload read timeout) before reading the answer (``/v1/predict stalled``; a 408 is the expected answer and is
recorded as a failure starting ``408 stalled upload cut off``, counted apart).

Environment: ``PANCREAS_LOCUST_PAYLOADS`` (required), ``PANCREAS_LOCUST_LOG`` (JSON-lines log of every
request; ``pancreas bench load`` computes its client-side numbers from it), ``PANCREAS_LOCUST_WAIT`` (seconds between requests of
one user, default ``0.1``), ``PANCREAS_LOCUST_TIMEOUT`` (request timeout in s, default 600),
``PANCREAS_API_KEY`` (sent as a bearer token when set).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from locust import HttpUser, User, constant, events, task

REJECTED = "503 queue full"
STALLED = "408 stalled upload cut off"
_PIECE = 64 * 1024


def _payloads() -> list[tuple[str, str, bytes]]:
    """(request name, file name, bytes) for every payload image."""
    folder = os.environ.get("PANCREAS_LOCUST_PAYLOADS")
    if not folder or not Path(folder).is_dir():
        raise RuntimeError(f"PANCREAS_LOCUST_PAYLOADS={folder!r} is not a folder; set it to a folder of "
                           "*_0000.nii.gz phantoms (`pancreas bench load` does this for you)")
    files = sorted(Path(folder).rglob("*_0000.nii.gz"))  # a standalone file (locust -f): pancreas.quiz names
    if not files:
        raise RuntimeError(f"no *_0000.nii.gz under PANCREAS_LOCUST_PAYLOADS={folder}")
    return [(f"/v1/predict {'full' if 'full' in str(f.relative_to(folder)) else 'crop'}", f.name, f.read_bytes())
            for f in files]


PAYLOADS: list[tuple[str, str, bytes]] = []


@events.request.add_listener
def _record(request_type: str, name: str, response_time: float, response_length: int,
            exception: BaseException | None = None, **_kwargs: object) -> None:
    """Append every finished request to ``$PANCREAS_LOCUST_LOG`` (JSON lines), including requests that end
    during ``--stop-timeout`` after locust's CSV has been written."""
    path = os.environ.get("PANCREAS_LOCUST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"end": time.time(), "type": request_type, "name": name, "ms": response_time,
                                "error": None if exception is None else str(exception)}) + "\n")


@events.init.add_listener
def _load_payloads(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    PAYLOADS.extend(_payloads())


class PredictUser(HttpUser):
    """One client sending one volume at a time, alternating between sizes."""

    wait_time = constant(float(os.environ.get("PANCREAS_LOCUST_WAIT", "0.1")))

    def on_start(self) -> None:
        key = os.environ.get("PANCREAS_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        self._order = random.Random(id(self)).sample(range(len(PAYLOADS)), len(PAYLOADS))
        self._i = 0

    @task
    def predict(self) -> None:
        name, filename, data = PAYLOADS[self._order[self._i % len(self._order)]]
        self._i += 1
        timeout = float(os.environ.get("PANCREAS_LOCUST_TIMEOUT", "600"))
        with self.client.post("/v1/predict", files={"file": (filename, data, "application/gzip")}, name=name,
                              timeout=timeout, catch_response=True) as resp:
            if resp.status_code == 503:
                retry = float(resp.headers.get("Retry-After", "1") or 1)
                resp.failure(f"{REJECTED} (Retry-After {retry:g})")
                time.sleep(min(retry, float(os.environ.get("PANCREAS_LOCUST_MAX_BACKOFF", "2"))))
            elif resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            elif b'"mask"' not in resp.content:
                resp.failure("200 without a mask in the JSON body")
            else:
                resp.success()


class SlowUploadUser(User):
    """A slow or stalled client on a raw socket (see the module docstring)."""

    fixed_count = max(1, int(os.environ.get("PANCREAS_LOCUST_SLOW_USERS", "0")))
    #: opt-in: a plain ``locust -f`` run (e.g. docker/loadtest.sh) has only PredictUser
    abstract = int(os.environ.get("PANCREAS_LOCUST_SLOW_USERS", "0")) < 1
    wait_time = constant(float(os.environ.get("PANCREAS_LOCUST_WAIT", "0.1")))

    def on_start(self) -> None:
        self._payload = min(PAYLOADS, key=lambda p: len(p[2]))[2]
        self._piece_s = float(os.environ.get("PANCREAS_LOCUST_SLOW_CHUNK_S", "0.05"))
        self._stall_s = float(os.environ.get("PANCREAS_LOCUST_STALL_S", "20"))

    @task(2)
    def slow(self) -> None:
        self._upload("/v1/predict slow", stall=False)

    @task(1)
    def stalled(self) -> None:
        self._upload("/v1/predict stalled", stall=True)

    def _upload(self, name: str, *, stall: bool) -> None:
        boundary = "slowclient"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ct.nii.gz\"\r\n"
                "Content-Type: application/gzip\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = self._payload[: len(self._payload) // 2] if stall else self._payload
        url = urlsplit(self.host)
        started, error, size = time.perf_counter(), None, 0
        try:
            with socket.create_connection((url.hostname, url.port or 80), timeout=120) as sock:
                sock.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: "
                              f"{len(head) + len(self._payload) + len(tail)}\r\nContent-Type: multipart/form-data; "
                              f"boundary={boundary}\r\n\r\n").encode() + head)
                for i in range(0, len(body), _PIECE):
                    sock.sendall(body[i:i + _PIECE])
                    time.sleep(self._piece_s)
                if stall:
                    time.sleep(self._stall_s)
                else:
                    sock.sendall(tail)
                resp = http.client.HTTPResponse(sock)
                resp.begin()
                data = resp.read()
                size = len(data)
                if resp.status == 503:
                    error = f"{REJECTED} (slow client)"
                elif stall and resp.status == 408:
                    error = STALLED
                elif resp.status != 200 or stall:
                    error = f"HTTP {resp.status}: {data[:200]!r}"
        except OSError as exc:
            error = f"slow client: {type(exc).__name__}: {exc}"
        events.request.fire(request_type="POST", name=name, response_time=(time.perf_counter() - started) * 1e3,
                            response_length=size, exception=None if error is None else RuntimeError(error),
                            context={})
