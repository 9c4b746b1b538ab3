"""Fixtures for the optimize tests: a tiny random bundle, real phantoms, real preprocessed patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

#: small enough for 2 shared CPU cores; 3 stages so the U-Net has real skip connections
PATCH = (16, 32, 32)
FEATURES = (4, 8, 16)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    from pancreas.testing import make_random_bundle, tiny_plans

    plans = tiny_plans(patch_size=PATCH, features=FEATURES)
    return make_random_bundle(tmp_path_factory.mktemp("bundle"), seed=0, plans=plans)


@pytest.fixture(scope="session")
def net(bundle):
    from pancreas.network import load_network

    state = torch.load(bundle.path(bundle.metadata.artifacts[0]), map_location="cpu", weights_only=True)
    return load_network(bundle.plans, bundle.metadata.network, state)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pancreas.phantoms import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("phantoms"), SynthConfig(cases_per_subtype=1,
                                                                       splits=("train", "validation"), seed=3))


@pytest.fixture(scope="session")
def patches(bundle, phantoms):
    """(calibration/training patches, held-out patches), real and preprocessed."""
    from optimize.data import phantom_patches

    train = phantom_patches(bundle, phantoms, split="train", max_cases=3, per_case=2, seed=1)
    val = phantom_patches(bundle, phantoms, split="validation", max_cases=3, per_case=1, seed=2)
    return train, val


@pytest.fixture(scope="session")
def onnx_model(net, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimize.export_onnx import export_onnx

    return export_onnx(net, PATCH, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def patch_size() -> tuple[int, int, int]:
    return PATCH


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
