"""TensorRT: engine build + backend parity where ``tensorrt`` and a GPU exist; a clear error elsewhere."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from pancreas.backends.tensorrt_build import TensorRTUnavailableError, TrtBuildConfig, require_tensorrt

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
    from optimize.validate import TOLERANCES, check_parity
    from pancreas.backends.tensorrt_backend import TensorRTBackend
    from pancreas.backends.tensorrt_build import EngineMetadata, build_engine, engine_matches, metadata_path

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


class _FakeConfig:
    """Records the builder flags and timing caches that pancreas.backends.tensorrt_build sets (no TensorRT here)."""

    def __init__(self, accept_cache: bool = True) -> None:
        self.flags = {"TF32"}  # TensorRT sets TF32 by default
        self.accept, self.caches = accept_cache, []

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags

    def create_timing_cache(self, data: bytes) -> bytes:
        return data

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        self.caches.append(cache)
        return self.accept or cache == b""

    def get_timing_cache(self) -> None:
        return None


_FAKE_TRT = types.SimpleNamespace(BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32"))


@pytest.mark.parametrize(("precision", "tf32", "flags"), [("fp32", False, []), ("fp32", True, ["TF32"]),
                                                         ("fp16", False, ["FP16", "TF32"])])
def test_fp32_engines_clear_tf32(precision, tf32, flags):
    from pancreas.backends.tensorrt_build import _precision_flags

    config = _FakeConfig()
    builder = types.SimpleNamespace(platform_has_fast_fp16=True, platform_has_fast_int8=True)
    assert _precision_flags(_FAKE_TRT, builder, config, TrtBuildConfig(precision=precision, tf32=tf32)) == flags
    assert ("TF32" in config.flags) == ("TF32" in flags)


def test_a_rejected_timing_cache_is_replaced_and_a_missing_one_not_written(tmp_path, caplog):
    from pancreas.backends.tensorrt_build import _save_timing_cache, _use_timing_cache

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    config = _FakeConfig(accept_cache=False)
    with caplog.at_level("WARNING", logger="pancreas.backends.tensorrt_build"):
        _use_timing_cache(config, cache)
        _save_timing_cache(config, cache)
    assert config.caches == [b"from another GPU", b""]
    assert "rejected the timing cache" in caplog.text and "returned no timing cache" in caplog.text
    assert cache.read_bytes() == b"from another GPU"


def test_engine_dtypes_cover_bf16_bool_int64():
    from pancreas.backends import BackendUnavailableError
    from pancreas.backends.tensorrt_backend import _torch_dtype

    names = ("FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL")
    trt = types.SimpleNamespace(DataType=types.SimpleNamespace(**{n: n for n in names}))  # no UINT8: skipped
    assert [_torch_dtype(trt, n) for n in names] == [torch.float32, torch.float16, torch.bfloat16, torch.int8,
                                                     torch.int32, torch.int64, torch.bool]
    with pytest.raises(BackendUnavailableError, match="FP8"):
        _torch_dtype(trt, "FP8")


@pytest.mark.parametrize(("built", "here", "why"), [
    (("H200", "9.0", "10.9"), ("H200", "9.0", "10.9"), None),
    (("H200", "9.0", "10.8"), ("H200", "9.0", "10.9"), "TensorRT 10.8, this is 10.9"),
    (("H100", "9.0", "10.9"), ("H200", "9.0", "10.9"), "built for H100 (sm 9.0), this is H200"),
    (("L4", "8.9", "10.9"), ("L4", "9.0", "10.9"), "(sm 8.9), this is L4 (sm 9.0)"),
])
def test_engine_fits_this_gpu_rule(built, here, why):
    """The one engine-fits-this-GPU rule (backend rebuild, optimize and the Docker entrypoint all call it)."""
    from pancreas.backends.tensorrt_build import EngineTarget, engine_mismatch

    found = engine_mismatch(EngineTarget.of(dict(zip(("gpu_name", "compute_capability", "tensorrt_version"),
                                                     built, strict=True))), EngineTarget(*here))
    assert found is None if why is None else why in found
