"""Fixtures for the service tests: real `pancreas serve` subprocesses, phantom CTs, upload helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import SimpleITK as sitk

from pancreas.testing import REAL_CT, REPO_ROOT, ServerProcess, blob_ct, clean_env, nifti_bytes, post_ct

SERVER_START_TIMEOUT_S = 120.0

#: Limits of the main test server: small enough to test them, large enough for the real CT.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_VOXELS = 4_000_000


class Server(ServerProcess):
    """A running `python -m pancreas serve` subprocess with its own request temp folder."""

    def __init__(self, *args: object, tmp_dir: Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.tmp_dir = tmp_dir


@contextlib.contextmanager
def run_server(bundle: Path, workdir: Path, *, wait: bool = True, **settings: object) -> Iterator[Server]:
    """Start a real server on a free port with ``PANCREAS_*`` settings (``wait``: until ready); stop it after."""
    tmp_dir = workdir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env(**settings)
    env.update(PANCREAS_TMP_DIR=str(tmp_dir), PANCREAS_NUM_THREADS=env.get("PANCREAS_NUM_THREADS", "1"),
               PANCREAS_LOG_LEVEL="warning")
    server = Server.serve(bundle, env=env, log=workdir / "server.log", cwd=REPO_ROOT, tmp_dir=tmp_dir).start()
    try:
        if wait:
            server.wait_ready(SERVER_START_TIMEOUT_S)
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


# ---- phantoms (helpers in pancreas.testing) -------------------------------------------------------
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
    """The service tests' configuration (server runner with the test limits, the real CT path); the generic
    helpers are imported from pancreas.testing (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(run_server=run_server, real_ct=REAL_CT, max_upload_bytes=MAX_UPLOAD_BYTES,
                           max_voxels=MAX_VOXELS)
