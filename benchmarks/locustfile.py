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

Environment: ``PANCREAS_LOCUST_PAYLOADS`` (required), ``PANCREAS_LOCUST_LOG`` (JSON-lines log of every
request; ``pancreas bench load`` computes its client-side numbers from it), ``PANCREAS_LOCUST_WAIT`` (seconds between requests of
one user, default ``0.1``), ``PANCREAS_LOCUST_TIMEOUT`` (request timeout in s, default 600),
``PANCREAS_API_KEY`` (sent as a bearer token when set).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, constant, events, task

REJECTED = "503 queue full"


def _payloads() -> list[tuple[str, str, bytes]]:
    """(request name, file name, bytes) for every payload image."""
    folder = os.environ.get("PANCREAS_LOCUST_PAYLOADS")
    if not folder or not Path(folder).is_dir():
        raise RuntimeError(f"PANCREAS_LOCUST_PAYLOADS={folder!r} is not a folder; set it to a folder of "
                           "*_0000.nii.gz phantoms (`pancreas bench load` does this for you)")
    files = sorted(Path(folder).rglob("*_0000.nii.gz"))
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
