"""`pancreas optimize --recipe onnx` on a 2D bundle: [B,1,h,w] export, parity gate, served by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from optimize.recipes import OptimizeOptions, optimize_bundle
from optimize.runners import ort_runner, torch_runner
from optimize.validate import ParityError, parity_gate
from pancreas.backends import create_backend
from pancreas.backends.slices import SliceBackend
from pancreas.bundle import Bundle
from pancreas.engine import Engine, EngineConfig
from pancreas.network import load_network
from pancreas.nifti import read_volume
from pancreas.testing import make_random_bundle, tiny_plans, write_case

PATCH_2D = (32, 32)


@pytest.fixture(scope="module")
def optimized_2d(phantoms, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    source = make_random_bundle(tmp_path_factory.mktemp("src2d") / "b", seed=2, configuration="2d",
                                plans=tiny_plans(configuration="2d", patch_size=PATCH_2D, spacing=(3.0, 3.0),
                                                 features=(4, 8, 16)))
    options = OptimizeOptions(data=phantoms, calib_cases=2, calib_per_case=1, val_cases=2, val_per_case=2,
                              parity_patches=4, command="pytest onnx 2d")
    return Bundle.load(optimize_bundle(source, "onnx", tmp_path_factory.mktemp("opt2d") / "opt", options=options).root)


def test_2d_onnx_export_is_gated_and_served_by_onnxruntime(optimized_2d, tmp_path) -> None:
    (art,) = optimized_2d.artifacts("onnx", "fp32")
    graph_input = onnx.load(str(optimized_2d.path(art))).graph.input[0]
    dims = [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, *PATCH_2D] and art.patch_size == list(PATCH_2D)
    (record,) = optimized_2d.metadata.optimization
    assert record["parity"]["passed"] and record["parity"]["n_patches"] == 4  # gated on real 2D phantom slices
    backend = create_backend(optimized_2d, EngineConfig(backend="onnxruntime", device="cpu"))
    assert isinstance(backend, SliceBackend) and backend.inner.name == "onnxruntime"
    volume = read_volume(write_case(tmp_path / "ct.nii.gz", (12, 70, 64), (1.5, 1.5, 2.0)))  # 12 slices, 2x3 tiles
    ort = Engine.from_bundle(optimized_2d, EngineConfig(backend="onnxruntime", device="cpu"))
    ref = Engine.from_bundle(optimized_2d, EngineConfig(backend="torch", device="cpu"))
    assert ort.info["backend"] == "onnxruntime" and ort.info["patch_size"] == list(PATCH_2D)
    a, b = ort.predict(volume), ref.predict(volume)
    assert a.mask.shape == volume.array.shape and np.mean(a.mask == b.mask) > 0.999
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-3)


def test_2d_parity_gate_fails_on_another_network(optimized_2d, tmp_path) -> None:
    """The gate is real for 2D: the ONNX model of one network does not pass against a differently seeded one."""
    other = make_random_bundle(tmp_path / "other", seed=9, configuration="2d", plans=optimized_2d.plans)
    net = load_network(other.plans, other.metadata.network,
                       torch.load(other.path(other.metadata.artifacts[0]), weights_only=True))
    (art,) = optimized_2d.artifacts("onnx", "fp32")
    images = np.random.default_rng(0).normal(size=(3, 1, *PATCH_2D)).astype(np.float32)
    with pytest.raises(ParityError):
        parity_gate(torch_runner(net), ort_runner(optimized_2d.path(art)), images, what="2d onnx")
