"""Project-wide test setup: markers that skip with a stated reason, shared paths."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from pancreas.testing import REAL_CT, REPO_ROOT

os.environ.setdefault("MPLBACKEND", "Agg")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    skip_trt = pytest.mark.skip(reason="needs NVIDIA TensorRT: `import tensorrt` is not available on this machine")
    has_gpu = _cuda_available() if any("gpu" in i.keywords for i in items) else False
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """The real abdominal CT from ../shared/data/real (skips with a reason where it is absent)."""
    path = REAL_CT
    if not path.is_file():
        pytest.skip(f"real CT not found at {path} (it ships in the workspace's shared/ folder)")
    return path
