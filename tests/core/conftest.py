"""Fixtures for the core tests: a fast random bundle, bundles with a recorded input domain, NIfTI writers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pancreas.bundle import Bundle
from pancreas.domain import InputDomain, record_domain
from pancreas.testing import make_random_bundle, tiny_plans, write_nifti

#: A non-RAS, oblique header: voxel axes permuted and flipped, then tilted 9 degrees about world y.
_T = np.deg2rad(9.0)
OBLIQUE_DIRECTION = tuple((np.array([[np.cos(_T), 0, np.sin(_T)], [0, 1, 0], [-np.sin(_T), 0, np.cos(_T)]])
                           @ np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])).ravel())


@pytest.fixture
def few_threads() -> None:
    """For tests running an engine in-process: the dev machines are oversubscribed, one thread is fastest."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Random-init tiny bundle at 4 mm: a whole-abdomen field of view is a handful of patches on a CPU."""
    plans = tiny_plans(spacing=(4.0, 4.0, 4.0))
    return make_random_bundle(tmp_path_factory.mktemp("tiny") / "b", plans=plans)


@pytest.fixture
def with_domain(tmp_path: Path) -> Callable[..., Bundle]:
    """``with_domain(bundle, domain_json)``: a copy of ``bundle`` whose metadata records that domain."""

    def make(bundle: Bundle, domain: dict) -> Bundle:
        root = Path(tempfile.mkdtemp(prefix="bundle-", dir=tmp_path)) / bundle.root.name
        shutil.copytree(bundle.root, root)
        return record_domain(root, InputDomain.model_validate(domain))

    return make


def ct_array(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT-like (z, y, x) array (air, body, one bright organ) and its 0/1/2 organ/lesion labels."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ct = np.full(shape, -1000.0)
    ct[(y / 0.9) ** 2 + (x / 0.95) ** 2 < 1] = 30.0
    organ = (z / 0.5) ** 2 + (y / 0.3) ** 2 + (x / 0.45) ** 2 < 1
    lesion = (z / 0.2) ** 2 + (y / 0.12) ** 2 + (x / 0.12) ** 2 < 1
    ct[organ], ct[lesion] = 110.0, 40.0
    labels = organ.astype(np.uint8) + lesion.astype(np.uint8)
    return np.round(ct + rng.normal(0, 12, shape)).astype(np.int16), labels


def write_case(path: Path, shape: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
               direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1), seed: int = 0,
               mask_path: Path | None = None) -> Path:
    """Write a CT-like NIfTI (and optionally its labels on the same grid); ``shape`` is numpy (z, y, x)."""
    ct, labels = ct_array(shape, seed)
    header = {"spacing": spacing_xyz, "origin": (-30.5, 12.0, 240.25), "direction": direction}
    if mask_path is not None:
        write_nifti(mask_path, labels, header)
    return write_nifti(path, ct, header)


@pytest.fixture(scope="session")
def util() -> SimpleNamespace:
    """Helpers for test modules (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(ct_array=ct_array, write_case=write_case, oblique=OBLIQUE_DIRECTION)
