"""``pancreas optimize --recipe onnx`` on a cascade: both stages exported and parity-gated, served by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx as onnx_lib
import pytest
import torch

from optimize.options import OptimizeOptions
from optimize.recipes import optimize_bundle, optimize_folds
from optimize.state import RecipeError
from pancreas.bundle import Bundle
from pancreas.engine import Engine
from pancreas.engine_config import EngineConfig
from pancreas.nifti import read_volume
from pancreas.testing import OBLIQUE_DIRECTION, cascade_plans, make_random_cascade_bundle, write_case

PATCH, LOWRES_PATCH, FEATURES = (16, 32, 32), (16, 16, 16), (4, 8, 16)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.set_num_threads(1)
    plans = cascade_plans(patch_size=PATCH, lowres_patch=LOWRES_PATCH, features=FEATURES)
    return make_random_cascade_bundle(tmp_path_factory.mktemp("cascade") / "bundle", plans=plans)


@pytest.fixture(scope="module")
def optimized(cascade, phantoms, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    options = OptimizeOptions(data=phantoms, calib_cases=2, calib_per_case=1, val_cases=2, val_per_case=1,
                              train_cases=2, train_per_case=1, parity_patches=2, command="pytest onnx cascade")
    return optimize_bundle(cascade, "onnx", tmp_path_factory.mktemp("opt") / "bundle", options=options)


def test_both_stages_get_gated_onnx_artifacts(optimized):
    assert optimized.metadata.previous_stage == "stages/3d_lowres"
    stages = {"3d_cascade_fullres": (optimized, 3), "3d_lowres": (optimized.previous_stage, 1)}
    for name, (bundle, channels) in stages.items():
        assert bundle.metadata.network.configuration == name
        onnx = bundle.artifacts("onnx", "fp32")
        assert len(onnx) == 1, name
        dims = [d.dim_value for d in onnx_lib.load(str(bundle.path(onnx[0]))).graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [channels, *bundle.configuration["patch_size"]], name
        record = bundle.metadata.optimization[-1]
        assert record["recipe"] == "onnx" and record["parity"]["passed"], (name, record["parity"])


def test_onnxruntime_serves_the_cascade_like_torch(optimized, tmp_path):
    path = write_case(tmp_path / "ct.nii.gz", (24, 40, 44), (1.5, 1.5, 2.5), direction=OBLIQUE_DIRECTION, seed=2)
    volume = read_volume(path)
    ort = Engine.from_bundle(optimized, EngineConfig(backend="onnxruntime", device="cpu", num_threads=1))
    assert ort.backend.name == ort.previous.backend.name == "onnxruntime"
    ort.warmup()
    ref = Engine.from_bundle(optimized, EngineConfig(backend="torch", device="cpu", num_threads=1))
    got, want = ort.predict(volume), ref.predict(volume)
    assert got.mask.shape == volume.array.shape
    assert np.mean(got.mask == want.mask) > 0.99
    assert np.allclose(got.probabilities, want.probabilities, atol=1e-3)
    assert set(got.parts_ms) == {"3d_lowres", "3d_cascade_fullres"}


def test_fold_by_fold_optimization_of_a_cascade_is_refused(cascade, tmp_path):
    with pytest.raises(RecipeError, match="cascade.*--fold k"):
        optimize_folds(cascade, "onnx", tmp_path / "out")
