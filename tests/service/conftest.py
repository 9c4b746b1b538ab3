"""Fixtures for the service tests: real `pancreas serve` subprocesses, phantom CTs, upload helpers."""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
REAL_CT = REPO.parent / "shared" / "data" / "real" / "totalseg_example_ct.nii.gz"
SERVER_START_TIMEOUT_S = 120.0

#: Limits of the main test server: small enough to test them, large enough for the real CT.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_VOXELS = 4_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running `python -m pancreas serve` subprocess."""

    process: subprocess.Popen
    url: str
    log: Path
    tmp_dir: Path
    readyz_seen: list[int] = field(default_factory=list)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120.0), **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as c:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
                with contextlib.suppress(httpx.TransportError):
                    status = c.get("/readyz").status_code
                    self.readyz_seen.append(status)
                    if status == 200:
                        return
                time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_text()}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@contextlib.contextmanager
def run_server(bundle: Path, workdir: Path, *, wait: bool = True, **settings: object) -> Iterator[Server]:
    """Start a real server on a free port with ``PANCREAS_*`` settings (``wait``: until ready); stop it after."""
    port = free_port()
    tmp_dir = workdir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANCREAS_")}
    env.update({f"PANCREAS_{k.upper()}": str(v) for k, v in settings.items()})
    env.update(PANCREAS_TMP_DIR=str(tmp_dir), PANCREAS_NUM_THREADS=env.get("PANCREAS_NUM_THREADS", "1"),
               PANCREAS_LOG_LEVEL="warning")
    log = workdir / "server.log"
    cmd = [sys.executable, "-m", "pancreas", "serve", "--model", str(bundle), "--host", "127.0.0.1",
           "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log, tmp_dir)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pancreas.testing import make_random_bundle, tiny_plans

    root = tmp_path_factory.mktemp("bundle") / "random-tiny"
    make_random_bundle(root, seed=0, plans=tiny_plans(spacing=(4.0, 4.0, 4.0)))  # few patches on CPU
    return root


@pytest.fixture(scope="session")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The main test server: random-init tiny bundle, generous queue, small size limits."""
    with run_server(tiny_bundle, tmp_path_factory.mktemp("server"), queue_size=16,
                    max_upload_bytes=MAX_UPLOAD_BYTES, max_voxels=MAX_VOXELS) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# ---- phantoms ----------------------------------------------------------------------------------------
def blob_ct(shape: tuple[int, int, int] = (24, 64, 64), spacing_xyz: tuple[float, float, float] = (1.2, 1.2, 2.5),
            seed: int = 0) -> sitk.Image:
    """A small synthetic abdominal CT (int16 HU, LPS, identity direction): body, organ, lesion, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0)
    ct[(y / 0.9) ** 2 + (x / 0.95) ** 2 < 1] = 30.0  # body
    c = rng.uniform(-0.2, 0.2, 3)
    organ = ((z - c[0]) / 0.5) ** 2 + ((y - c[1]) / 0.25) ** 2 + ((x - c[2]) / 0.45) ** 2 < 1
    ct[organ] = 110.0
    ct[((z - c[0]) / 0.2) ** 2 + ((y - c[1]) / 0.12) ** 2 + ((x - c[2]) / 0.12) ** 2 < 1] = 40.0  # lesion
    ct += rng.normal(0, 12, shape)
    image = sitk.GetImageFromArray(np.round(ct).astype(np.int16))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-40.0, 25.0, 100.0))
    return image


def nifti_bytes(image: sitk.Image, workdir: Path, name: str = "ct.nii.gz") -> bytes:
    path = workdir / name
    sitk.WriteImage(image, str(path), useCompression=name.endswith(".gz"))
    return path.read_bytes()


def decode_mask(b64_or_bytes: str | bytes, workdir: Path, name: str = "mask.nii.gz") -> sitk.Image:
    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    assert data[:2] == b"\x1f\x8b", "mask is not gzip"
    gzip.decompress(data)  # a complete stream
    path = workdir / name
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def post_ct(client: httpx.Client, data: bytes, *, filename: str = "ct.nii.gz", field: str = "file",
            **kwargs) -> httpx.Response:
    return client.post("/v1/predict", files={field: (filename, data, "application/gzip")}, **kwargs)


@pytest.fixture(scope="session")
def blob_image() -> sitk.Image:
    return blob_ct()


@pytest.fixture(scope="session")
def blob_bytes(blob_image: sitk.Image, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return nifti_bytes(blob_image, tmp_path_factory.mktemp("blob"))


@pytest.fixture
def post(client: httpx.Client) -> Callable[..., httpx.Response]:
    return lambda data, **kw: post_ct(client, data, **kw)


@pytest.fixture(scope="session")
def util() -> SimpleNamespace:
    """Helper functions for test modules (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(blob_ct=blob_ct, nifti_bytes=nifti_bytes, decode_mask=decode_mask, post_ct=post_ct,
                           run_server=run_server, real_ct=REAL_CT, max_upload_bytes=MAX_UPLOAD_BYTES,
                           max_voxels=MAX_VOXELS, free_port=free_port)
