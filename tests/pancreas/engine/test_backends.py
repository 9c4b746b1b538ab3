"""Backends: registry, torch, onnxruntime (real sessions) and fold ensembling on random bundles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pancreas import backends
from pancreas.backends import BackendUnavailableError, create_backend, register_backend, resolve_backend
from pancreas.backends.ensemble import EnsembleBackend
from pancreas.bundle import Artifact, Bundle
from pancreas.engine import Engine, EngineConfig
from pancreas.errors import BundleError, PancreasError
from pancreas.network import load_network

CPU_TORCH = EngineConfig(backend="torch", device="cpu")


def export_onnx(bundle: Bundle, out: Path, *, dynamic_batch: bool = True) -> Path:
    """Export fold 0 with the optimize exporter when present, else plain torch.onnx.export."""
    state = torch.load(bundle.path(bundle.artifacts("torch")[0]), weights_only=True)
    net = load_network(bundle.plans, bundle.metadata.network, state)
    patch = bundle.configuration["patch_size"]
    try:
        from optimize.export_onnx import OnnxExportConfig
        from optimize.export_onnx import export_onnx as exporter
    except ImportError:
        dummy = torch.randn(1, 1, *patch)
        axes = {n: {0: "batch"} for n in ("image", "seg_logits", "cls_logits")} if dynamic_batch else None
        torch.onnx.export(net, (dummy,), str(out), input_names=["image"], output_names=["seg_logits", "cls_logits"],
                          opset_version=17, dynamo=False, dynamic_axes=axes)
        return out
    return exporter(net, patch, out, config=OnnxExportConfig(simplify=False, dynamic_batch=dynamic_batch))


def with_onnx(bundle: Bundle, root: Path, *, dynamic_batch: bool = True) -> Bundle:
    shutil.copytree(bundle.root, root)
    export_onnx(bundle, root / "models" / "model.onnx", dynamic_batch=dynamic_batch)
    meta = bundle.metadata.model_copy(deep=True)
    meta.artifacts.append(Artifact(kind="onnx", path="models/model.onnx", precision="fp32",
                                   patch_size=list(bundle.configuration["patch_size"])))
    return Bundle.write(root, meta, bundle.plans, bundle.dataset)


@pytest.fixture(scope="module")
def onnx_bundle(bundle, tmp_path_factory) -> Bundle:
    return with_onnx(bundle, tmp_path_factory.mktemp("onnx") / "b")


def test_torch_backend_contract(bundle) -> None:
    b = create_backend(bundle, CPU_TORCH)
    assert (b.name, b.precision, b.device) == ("torch", "fp32", "cpu")
    x = np.random.default_rng(0).normal(size=(2, 1, *b.patch_size)).astype(np.float32)
    seg, cls = b(x)
    assert isinstance(seg, np.ndarray) and seg.dtype == np.float32 and seg.shape == (2, 3, *b.patch_size)
    assert cls.shape == (2, 3) and cls.dtype == np.float32


def test_onnxruntime_agrees_with_torch(bundle, onnx_bundle) -> None:
    t = create_backend(bundle, CPU_TORCH)
    o = create_backend(onnx_bundle, EngineConfig(backend="onnxruntime", device="cpu", num_threads=1))
    assert o.name == "onnxruntime" and o.patch_size == t.patch_size and o.providers == ["CPUExecutionProvider"]
    x = np.random.default_rng(1).normal(size=(3, 1, *t.patch_size)).astype(np.float32)
    (ts, tc), (os_, oc) = t(x), o(x)
    np.testing.assert_allclose(os_, ts, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(oc, tc, atol=2e-3, rtol=1e-3)


def test_engine_on_onnxruntime_matches_torch(onnx_bundle, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((24, 44, 48), seed=2), (2.0, 1.5, 1.5))
    a = Engine.from_bundle(onnx_bundle, CPU_TORCH).predict(vol)
    b = Engine.from_bundle(onnx_bundle, EngineConfig(backend="onnxruntime", device="cpu")).predict(vol)
    assert (a.mask == b.mask).mean() > 0.999
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-3)


def test_fixed_batch_onnx_is_split_and_padded(bundle, tmp_path) -> None:
    fixed = with_onnx(bundle, tmp_path / "fixed", dynamic_batch=False)
    o = create_backend(fixed, EngineConfig(backend="onnxruntime", device="cpu"))
    assert o.max_batch == 1
    t = create_backend(bundle, CPU_TORCH)
    x = np.random.default_rng(2).normal(size=(3, 1, *t.patch_size)).astype(np.float32)
    np.testing.assert_allclose(o(x)[0], t(x)[0], atol=2e-3, rtol=1e-3)


def test_auto_prefers_onnxruntime_on_cpu_when_an_onnx_artifact_exists(bundle, onnx_bundle) -> None:
    if torch.cuda.is_available():
        pytest.skip("auto picks a CUDA backend on GPU hosts")
    assert resolve_backend(onnx_bundle, EngineConfig()) == "onnxruntime"
    assert resolve_backend(bundle, EngineConfig()) == "torch"
    assert Engine.from_bundle(onnx_bundle).info["backend"] == "onnxruntime"


def test_folds_become_a_softmax_averaging_ensemble(bundle2) -> None:
    ens = create_backend(bundle2, CPU_TORCH)
    assert isinstance(ens, EnsembleBackend) and len(ens) == 2
    singles = [create_backend(bundle2, CPU_TORCH, art) for art in bundle2.artifacts("torch")]
    x = torch.randn(2, 1, *ens.patch_size)
    seg, cls = ens(x)
    outs = [s(x) for s in singles]
    assert not torch.allclose(outs[0][0], outs[1][0])
    mean_p = (torch.softmax(outs[0][0], 1) + torch.softmax(outs[1][0], 1)) / 2
    torch.testing.assert_close(torch.softmax(seg, 1), mean_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.softmax(cls, 1), (torch.softmax(outs[0][1], 1) + torch.softmax(outs[1][1], 1)) / 2)
    seg_np, _ = ens(x.numpy())  # the numpy contract gives the same answer
    np.testing.assert_allclose(seg_np, seg.numpy(), atol=1e-5)


def test_registry_errors_and_lazy_registration(bundle, monkeypatch) -> None:
    with pytest.raises(PancreasError, match="unknown"):
        create_backend(bundle, EngineConfig(backend="nope"))
    monkeypatch.setitem(backends.BACKENDS, "ghost", "pancreas.backends.no_such_module:create")
    monkeypatch.setitem(backends.ARTIFACT_KINDS, "ghost", "torch")
    with pytest.raises(BackendUnavailableError, match="ghost"):
        create_backend(bundle, EngineConfig(backend="ghost"))
    register_backend("torch2", "pancreas.backends.torch_backend:create", artifact_kind="torch", runtime_cast=True)
    try:
        assert create_backend(bundle, EngineConfig(backend="torch2", device="cpu")).name == "torch"
    finally:
        for table in (backends.BACKENDS, backends.ARTIFACT_KINDS):
            table.pop("torch2", None)
        backends.RUNTIME_CAST.discard("torch2")
    with pytest.raises(BundleError, match="no onnx artifact"):
        create_backend(bundle, EngineConfig(backend="onnxruntime"))
    with pytest.raises(BackendUnavailableError, match="fp16"):
        create_backend(bundle, EngineConfig(backend="torch", device="cpu", precision="fp16"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fp16_close_to_fp32(bundle) -> None:
    a = create_backend(bundle, EngineConfig(backend="torch", device="cuda"))
    h = create_backend(bundle, EngineConfig(backend="torch", device="cuda", precision="fp16"))
    x = torch.randn(2, 1, *a.patch_size, device="cuda")
    torch.testing.assert_close(h(x)[0], a(x)[0], atol=5e-2, rtol=5e-2)


def _with_recommendation(bundle: Bundle, root: Path, recommended: dict[str, str],
                         extra: list[Artifact] = ()) -> Bundle:
    shutil.copytree(bundle.root, root)
    meta = bundle.metadata.model_copy(deep=True)
    meta.artifacts.extend(extra)
    meta.inference = {**meta.inference, "recommended": recommended}
    for art in extra:
        (root / art.path).write_bytes(b"stand-in")  # never loaded: only resolution is tested
    return Bundle.write(root, meta, bundle.plans, bundle.dataset)


def test_auto_honours_the_recommended_backend_and_precision(onnx_bundle, tmp_path, monkeypatch) -> None:
    """``metadata.inference["recommended"]`` (pancreas optimize) is read; at the default precision auto
    picks an fp16 TensorRT engine on a GPU host (device resolution and the TensorRT import faked)."""
    engines = [Artifact(kind="tensorrt", path="models/model_fp16.plan", precision="fp16")]
    trt = _with_recommendation(onnx_bundle, tmp_path / "trt", {"backend": "tensorrt", "precision": "fp16"}, engines)
    to_torch = _with_recommendation(onnx_bundle, tmp_path / "torch", {"backend": "torch", "precision": "fp32"})
    monkeypatch.setattr(backends, "resolve_device", lambda device: "cpu")
    assert backends.resolve(trt, EngineConfig()) == ("onnxruntime", "fp32")  # recommendation not runnable on CPU
    assert backends.resolve(to_torch, EngineConfig()) == ("torch", "fp32")  # recommended over onnxruntime
    assert backends.resolve(to_torch, EngineConfig(precision="fp32")) == ("torch", "fp32")
    monkeypatch.setattr(backends, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(backends, "_importable", lambda module: True)
    assert backends.resolve(trt, EngineConfig()) == ("tensorrt", "fp16")
    assert backends.resolve(trt, EngineConfig(backend="tensorrt")) == ("tensorrt", "fp16")
    assert backends.resolve(trt, EngineConfig(precision="fp32")) == ("torch", "fp32")  # no fp32 engine
    monkeypatch.setattr(backends, "_importable", lambda module: False)
    assert backends.resolve(trt, EngineConfig()) == ("torch", "fp32")


def test_a_bf16_recommendation_runs_fp32_on_a_cpu_without_native_bf16(onnx_bundle, tmp_path, monkeypatch) -> None:
    """``precision="auto"`` takes a recommended bf16 only where the CPU computes bf16 natively (emulated bf16
    is slower than fp32); an explicit bf16 and a GPU keep it."""
    b = _with_recommendation(onnx_bundle, tmp_path / "bf16", {"backend": "torch", "precision": "bf16"})
    monkeypatch.setattr(backends, "resolve_device", lambda device: "cpu")
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert backends.resolve(b, EngineConfig()) == ("torch", "bf16")
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.resolve(b, EngineConfig()) == ("torch", "fp32")
    assert backends.resolve(b, EngineConfig(backend="torch")) == ("torch", "fp32")
    assert backends.resolve(b, EngineConfig(precision="bf16")) == ("torch", "bf16")
    monkeypatch.setattr(backends, "resolve_device", lambda device: "cuda")
    assert backends.resolve(b, EngineConfig()) == ("torch", "bf16")


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx512f avx512_vnni\n")
    assert not backends.cpu_has_native_bf16(info)
    info.write_text("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert backends.cpu_has_native_bf16(info)
    assert not backends.cpu_has_native_bf16(tmp_path / "missing")


def test_artifacts_written_for_another_runtime_come_last(onnx_bundle, tmp_path) -> None:
    trt_qdq = Artifact(kind="onnx", path="models/model_int8_trt.onnx", precision="int8", info={"target": "tensorrt"})
    ort_qdq = Artifact(kind="onnx", path="models/model_int8.onnx", precision="int8")
    b = _with_recommendation(onnx_bundle, tmp_path / "b", {}, [trt_qdq, ort_qdq])
    assert [a.path for a in backends.select_artifacts(b, "onnxruntime", "int8")] == [ort_qdq.path]


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_a_provider_the_session_dropped_is_an_error(onnx_bundle, monkeypatch) -> None:
    """onnxruntime lists a provider it then fails to start (here: CUDA on a CPU build); the backend
    compares ``session.get_providers()`` with the request instead of quietly running on the CPU."""
    import onnxruntime as ort

    from pancreas.backends.onnxruntime_backend import OnnxRuntimeBackend

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    path = onnx_bundle.path(onnx_bundle.artifacts("onnx")[0])
    with pytest.raises(BackendUnavailableError, match="could not start \\['CUDAExecutionProvider'\\]"):
        OnnxRuntimeBackend(path, device="cpu", providers=["CUDAExecutionProvider"], num_threads=1)
    assert OnnxRuntimeBackend(path, device="cpu", num_threads=1).providers == ["CPUExecutionProvider"]


def test_onnxruntime_device_auto_and_cuda_index(monkeypatch, caplog) -> None:
    from pancreas.backends import onnxruntime_backend as ortb

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with caplog.at_level("WARNING", logger=ortb.__name__):
        assert ortb.session_device("auto") == "cpu"  # a GPU host whose onnxruntime has no GPU provider
    assert "running onnxruntime on the CPU" in caplog.text
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        ortb.choose_providers(ortb.session_device("cuda"))
    assert ortb.provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda:1") == \
        [{"device_id": "1"}, {}]
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        backends.resolve_device("cuda:2")
