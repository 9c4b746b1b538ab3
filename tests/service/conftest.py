"""Fixtures for the service tests: the main real `pancreas serve` subprocess, phantom CTs, upload limits
(servers of their own: :func:`pancreas.testing.running_server`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import SimpleITK as sitk

from pancreas.testing import ServerProcess, blob_ct, nifti_bytes, post_ct, running_server

SERVER_START_TIMEOUT_S = 120.0

#: Limits of the main test server: small enough to test them, large enough for the real CT.
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_VOXELS = 4_000_000


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pancreas.testing import make_random_bundle, tiny_plans

    root = tmp_path_factory.mktemp("bundle") / "random-tiny"
    make_random_bundle(root, seed=0, plans=tiny_plans(spacing=(4.0, 4.0, 4.0)))  # few patches on CPU
    return root


@pytest.fixture(scope="session")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The main test server: random-init tiny bundle, generous queue, small size limits."""
    with running_server(tiny_bundle, tmp_path_factory.mktemp("server"), start_timeout_s=SERVER_START_TIMEOUT_S,
                        queue_size=16, max_upload_bytes=MAX_UPLOAD_BYTES, max_voxels=MAX_VOXELS) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
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
def limits() -> dict[str, int]:
    """The main test server's upload limits (for tests that probe them or start a server like it)."""
    return {"max_upload_bytes": MAX_UPLOAD_BYTES, "max_voxels": MAX_VOXELS}
