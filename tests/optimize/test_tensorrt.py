"""TensorRT: engine build + backend parity where ``tensorrt`` and a GPU exist; a clear error elsewhere."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from optimize.tensorrt_build import TensorRTUnavailableError, TrtBuildConfig, require_tensorrt

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT_REASON = "the tensorrt Python package cannot be imported here (no TensorRT on this machine)"


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the unavailable path cannot be exercised")
def test_require_tensorrt_names_the_fix():
    with pytest.raises(TensorRTUnavailableError, match="GPU Docker image"):
        require_tensorrt()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the unavailable path cannot be exercised")
def test_tensorrt_recipe_fails_before_writing_anything(bundle, tmp_path):
    from optimize.recipes import optimize_bundle

    with pytest.raises(TensorRTUnavailableError):
        optimize_bundle(bundle, "tensorrt", tmp_path / "trt")
    assert not list((tmp_path / "trt" / "models").glob("*.plan"))


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT_REASON)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU; torch sees none")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_metadata_and_backend_parity(net, onnx_model, patches, patch_size, tmp_path, precision):
    from optimize.runners import torch_runner
    from optimize.tensorrt_build import EngineMetadata, build_engine, engine_matches, metadata_path
    from optimize.validate import TOLERANCES, check_parity
    from pancreas.backends.tensorrt_backend import TensorRTBackend

    engine = tmp_path / f"model_{precision}.plan"
    meta = build_engine(onnx_model, engine, config=TrtBuildConfig(precision=precision, max_batch=2),
                        timing_cache=tmp_path / "timing.cache")
    assert engine.is_file() and (tmp_path / "timing.cache").is_file()
    assert EngineMetadata.read(metadata_path(engine)).precision == meta.precision == precision
    assert meta.compute_capability and meta.gpu_name and engine_matches(engine)[0]
    backend = TensorRTBackend(engine, precision=meta.precision, patch_size=patch_size, max_batch=2)
    report = check_parity(torch_runner(net), backend, patches[1].images[:3], TOLERANCES[precision])
    assert report.passed, report.failures


def test_tensorrt_backend_refuses_cpu_before_touching_tensorrt(bundle):
    from pancreas.backends import BackendUnavailableError
    from pancreas.backends.tensorrt_backend import create
    from pancreas.bundle import Artifact
    from pancreas.engine import EngineConfig

    artifact = Artifact(kind="tensorrt", path="models/model_fp16.plan", precision="fp16")
    with pytest.raises(BackendUnavailableError, match="CUDA only"):
        create(bundle, EngineConfig(backend="tensorrt", device="cpu"), artifact)
