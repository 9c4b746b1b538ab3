"""Fixtures for the engine tests: tiny random bundles and CT-like synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pancreas.bundle import Bundle
from pancreas.nifti import Volume, canonicalize
from pancreas.testing import make_random_bundle, tiny_plans

PATCH = (16, 32, 32)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # the shared CI/dev machines are oversubscribed: 1 thread is fastest


def small_plans(patch: tuple[int, int, int] = PATCH, spacing: tuple[float, float, float] = (2.0, 1.5, 1.5)
                ) -> dict:
    return tiny_plans(patch_size=patch, spacing=spacing, features=(4, 8, 16))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "b", seed=0, plans=small_plans())


@pytest.fixture(scope="session")
def bundle2(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Two folds, another seed."""
    return make_random_bundle(tmp_path_factory.mktemp("bundle2") / "b", seed=3, folds=2, plans=small_plans())


def ct_like(shape: tuple[int, int, int], seed: int = 0, organ: bool = True, noise: float = 15.0) -> np.ndarray:
    """Air border, soft-tissue body with sharp-edged organs and noise (HU), float32 (z, y, x)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = np.full(shape, -1000.0)
    body = (yy / 0.85) ** 2 + (xx / 0.9) ** 2 < 1
    img[body] = 20.0
    if organ:
        img[((zz - 0.1) / 0.5) ** 2 + ((yy + 0.1) / 0.3) ** 2 + ((xx - 0.2) / 0.35) ** 2 < 1] = 120.0
        img[((yy - 0.4) / 0.15) ** 2 + ((xx + 0.4) / 0.15) ** 2 < 1] = 400.0  # "bone"
    img += rng.normal(0, noise, shape)
    return img.astype(np.float32)


def volume_of(array: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """A canonical Volume (identity direction) from a (z, y, x) array and numpy-order spacing."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    return canonicalize(image)


@pytest.fixture(scope="session")
def make_ct():
    return ct_like


@pytest.fixture(scope="session")
def make_volume():
    return volume_of


@pytest.fixture(scope="session")
def make_plans():
    return small_plans
