"""docker/entrypoint.py: the engine decision (table-driven, on real bundle folders) and its commands.

The accelerator is an input of :func:`decide` (what ``probe_accelerator`` would report on an H100 with
TensorRT, on an L4, on a CPU host), so every branch of the decision is exercised here without a GPU. The
real build on a GPU runs in ``test_engine_build_on_gpu`` (skipped where TensorRT or CUDA is missing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pancreas.testing import REPO_ROOT, free_port

REPO = REPO_ROOT
ENTRYPOINT = REPO / "docker" / "entrypoint.py"
H100 = ("NVIDIA H100 80GB HBM3", "9.0", "10.16.1.11")
L4 = ("NVIDIA L4", "8.9", "10.16.1.11")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_entrypoint", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


ep = _load()


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pancreas.testing import make_random_bundle

    root = tmp_path_factory.mktemp("src") / "random-tiny"
    make_random_bundle(root, seed=0)
    return root


@pytest.fixture
def bundle(source_bundle: Path, tmp_path: Path) -> Path:
    """A private copy (some tests edit its metadata)."""
    return Path(shutil.copytree(source_bundle, tmp_path / "bundle"))


def options(bundle: Path, cache: Path, **env: str) -> object:
    return ep.EngineOptions.from_env({"PANCREAS_BUNDLE": str(bundle), "PANCREAS_ENGINE_CACHE": str(cache), **env})


def accelerator(gpu: tuple[str, str, str] | None, *, trt: bool = True) -> object:
    if gpu is None:
        return ep.Accelerator(notes=("torch.cuda.is_available() is False",))
    return ep.Accelerator(gpu[0], gpu[1], gpu[2] if trt else None)


def write_stamp(opts: object, acc: object, **overrides: str) -> Path:
    target = ep.engine_dir_for(opts, acc)
    target.mkdir(parents=True)
    (target / ep.STAMP).write_text(json.dumps({**ep.expected_stamp(opts, acc), **overrides}))
    return target


def add_engine_artifact(bundle: Path, info: dict[str, str], precision: str = "fp16") -> None:
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    (bundle / "models" / "model_fp16.engine").write_bytes(b"serialized engine")
    meta["artifacts"].append({"kind": "tensorrt", "path": "models/model_fp16.engine", "precision": precision,
                              "info": info})
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("env", "gpu", "trt", "action", "reason"), [
    ({}, None, False, "serve-as-is", "no CUDA GPU"),
    ({}, H100, False, "serve-as-is", "TensorRT is not installed"),
    ({"PANCREAS_BACKEND": "torch"}, H100, True, "serve-as-is", "PANCREAS_BACKEND=torch"),
    ({"PANCREAS_BACKEND": "onnxruntime"}, H100, True, "serve-as-is", "no TensorRT engine needed"),
    ({"PANCREAS_ENGINE": "off"}, H100, True, "serve-as-is", "engine build disabled"),
    ({}, H100, True, "build", "no engine cached"),
    ({"PANCREAS_BACKEND": "tensorrt"}, H100, True, "build", "no engine cached"),
    ({"PANCREAS_ENGINE": "rebuild"}, H100, True, "build", "rebuilding unconditionally"),
])
def test_decision_table(bundle: Path, tmp_path: Path, env: dict[str, str], gpu: tuple | None, trt: bool,
                        action: str, reason: str) -> None:
    decision = ep.decide(options(bundle, tmp_path / "cache", **env), accelerator(gpu, trt=trt))
    assert decision.action == action
    assert reason in decision.reason
    if action == "serve-as-is":
        assert decision.bundle == bundle and decision.backend is None
    else:
        assert decision.backend == "tensorrt" and decision.bundle == decision.engine_dir
        assert decision.engine_dir.parent == tmp_path / "cache"


@pytest.mark.parametrize("env", [{"PANCREAS_BACKEND": "tensorrt"}, {"PANCREAS_ENGINE": "require"}])
@pytest.mark.parametrize(("gpu", "trt", "missing"), [(None, False, "no CUDA GPU"),
                                                     (H100, False, "TensorRT is not installed")])
def test_required_engine_without_gpu_or_tensorrt_fails_with_the_fix(bundle: Path, tmp_path: Path,
                                                                     env: dict, gpu: tuple | None, trt: bool,
                                                                     missing: str) -> None:
    with pytest.raises(RuntimeError, match=missing) as info:
        ep.decide(options(bundle, tmp_path, **env), accelerator(gpu, trt=trt))
    assert "--gpus all" in str(info.value)


def test_engine_folder_names_gpu_capability_tensorrt_and_precision(bundle: Path, tmp_path: Path) -> None:
    opts = options(bundle, tmp_path, PANCREAS_ENGINE_PRECISION="int8")
    name = ep.engine_dir_for(opts, accelerator(H100)).name
    assert name.startswith("random-tiny-")
    assert name.endswith("__nvidia-h100-80gb-hbm3__sm90__trt10.16.1.11__int8")
    assert ep.engine_dir_for(opts, accelerator(L4)).name != name


def test_cached_engine_is_reused_only_on_the_gpu_and_tensorrt_it_was_built_for(bundle: Path,
                                                                               tmp_path: Path) -> None:
    opts, h100 = options(bundle, tmp_path), accelerator(H100)
    target = write_stamp(opts, h100)
    reuse = ep.decide(opts, h100)
    assert (reuse.action, reuse.bundle, reuse.precision) == ("use-cached-engine", target, "fp16")
    assert ep.decide(opts, accelerator(L4)).action == "build"  # another GPU: another folder, not built yet
    newer_trt = ep.Accelerator(H100[0], H100[1], "10.17.0.1")
    assert ep.decide(opts, newer_trt).action == "build"


def test_stamp_that_disagrees_with_the_machine_triggers_a_rebuild(bundle: Path, tmp_path: Path) -> None:
    """A folder copied from another host (same name, other stamp) is not trusted."""
    opts, h100 = options(bundle, tmp_path), accelerator(H100)
    write_stamp(opts, h100, tensorrt_version="10.13.0.35")
    decision = ep.decide(opts, h100)
    assert decision.action == "build"
    assert "TensorRT 10.13.0.35, this is 10.16.1.11" in decision.reason


def test_re_exported_bundle_gets_a_new_engine(bundle: Path, tmp_path: Path) -> None:
    opts, h100 = options(bundle, tmp_path), accelerator(H100)
    write_stamp(opts, h100)
    meta_path = bundle / "configs" / "metadata.json"
    meta_path.write_text(meta_path.read_text().replace("random-init test bundle", "re-exported bundle"))
    assert ep.decide(options(bundle, tmp_path), h100).action == "build"


def test_bundle_shipping_a_matching_engine_is_served_directly(bundle: Path, tmp_path: Path) -> None:
    # the layout optimize.stages.tensorrt writes: info["engine"] = EngineMetadata
    add_engine_artifact(bundle, {"onnx": "models/model.onnx", "engine": {
        "tensorrt_version": H100[2], "gpu_name": H100[0], "compute_capability": "9.0", "precision": "fp16"}})
    decision = ep.decide(options(bundle, tmp_path), accelerator(H100))
    assert (decision.action, decision.bundle, decision.backend) == ("use-bundle-engine", bundle, "tensorrt")
    other = ep.decide(options(bundle, tmp_path), accelerator(L4))
    assert other.action == "build" and "NVIDIA L4" in other.reason


def test_options_from_env_validate_input(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PANCREAS_ENGINE='sometimes'"):
        options(bundle, tmp_path, PANCREAS_ENGINE="sometimes")
    with pytest.raises(ValueError, match="PANCREAS_ENGINE_PRECISION='int4'"):
        options(bundle, tmp_path, PANCREAS_ENGINE_PRECISION="int4")
    with pytest.raises(FileNotFoundError, match="not a model bundle"):
        ep.EngineOptions.from_env({"PANCREAS_BUNDLE": str(tmp_path / "nope")})
    from pancreas.bundle import default_bundle_path

    assert ep.EngineOptions.from_env({"PANCREAS_BUNDLE": ""}).bundle == default_bundle_path()


def test_recipes_match_pancreas_optimize() -> None:
    """Every default recipe parses with optimize.recipes (the syntax `pancreas optimize --recipe` accepts)."""
    from optimize.recipes import parse_recipes

    for precision in ep.ENGINE_PRECISIONS:
        recipes = parse_recipes(ep.default_recipe(precision))
        assert recipes[-1].name == "tensorrt" and recipes[-1].arg == precision


def test_prepare_on_this_cpu_serves_the_bundle_as_is(bundle: Path, tmp_path: Path) -> None:
    acc = ep.probe_accelerator()
    if acc.gpu_name and acc.tensorrt_version:
        pytest.skip("this machine has a GPU and TensorRT: covered by test_engine_build_on_gpu")
    env = {"PANCREAS_BUNDLE": str(bundle), "PANCREAS_ENGINE_CACHE": str(tmp_path / "cache"), "OTHER": "kept"}
    decision, serve_env = ep.prepare(env)
    assert decision.action == "serve-as-is" and decision.notes
    assert serve_env["PANCREAS_BUNDLE"] == str(bundle) and serve_env["OTHER"] == "kept"
    assert "PANCREAS_BACKEND" not in serve_env  # the service's own `auto` picks onnxruntime/torch on CPU


def test_failed_build_falls_back_in_auto_mode_and_fails_when_required(bundle: Path, tmp_path: Path) -> None:
    """A real `pancreas optimize` subprocess that cannot build an engine here (no TensorRT)."""
    if ep.probe_accelerator().tensorrt_version:
        pytest.skip("TensorRT is installed here, so the build would succeed")
    env = {"PANCREAS_BUNDLE": str(bundle), "PANCREAS_ENGINE_CACHE": str(tmp_path / "cache"),
           "PANCREAS_ENGINE_RECIPE": "tensorrt"}
    claimed = accelerator(H100)  # what a GPU host would report; the build itself runs for real and fails
    decision, serve_env = ep.prepare(env, claimed)
    assert decision.action == "serve-as-is" and "engine build failed" in decision.reason
    assert serve_env["PANCREAS_BUNDLE"] == str(bundle)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]  # no half-built folder left
    with pytest.raises(RuntimeError, match="engine build failed"):
        ep.prepare({**env, "PANCREAS_ENGINE": "require"}, claimed)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PANCREAS_")}
    return subprocess.run([sys.executable, str(ENTRYPOINT), *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_plan_and_build_engine_commands(bundle: Path, tmp_path: Path) -> None:
    env = {"PANCREAS_BUNDLE": str(bundle), "PANCREAS_ENGINE_CACHE": str(tmp_path)}
    if ep.probe_accelerator().gpu_name:
        pytest.skip("expects a machine without a GPU")
    plan = _run("plan", **env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["action"] == "serve-as-is"
    built = _run("build-engine", **env)
    assert built.returncode == 0 and "build-engine done: serve-as-is" in built.stderr, built.stderr
    required = _run("build-engine", PANCREAS_ENGINE="require", **env)
    assert required.returncode == 1 and "a TensorRT engine is required" in required.stderr
    missing = _run("serve", PANCREAS_BUNDLE=str(tmp_path / "missing"))
    assert missing.returncode == 1 and "is not a model bundle" in missing.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    port = free_port()
    result = _run("healthcheck", PANCREAS_PORT=str(port))
    assert result.returncode == 1 and "healthcheck" in result.stderr


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_build_on_gpu(bundle: Path, tmp_path: Path) -> None:
    """On a GPU host with TensorRT: build once, cache, then reuse (needs `pancreas optimize --recipe tensorrt`)."""
    env = {"PANCREAS_BUNDLE": str(bundle), "PANCREAS_ENGINE_CACHE": str(tmp_path / "cache")}
    first, serve_env = ep.prepare(env)
    assert first.action == "build" and first.reason.startswith("built:")
    stamp = json.loads((first.engine_dir / ep.STAMP).read_text())
    acc = ep.probe_accelerator()
    assert (stamp["gpu_name"], stamp["tensorrt_version"]) == (acc.gpu_name, acc.tensorrt_version)
    assert serve_env["PANCREAS_BACKEND"] == "tensorrt" and serve_env["PANCREAS_BUNDLE"] == str(first.engine_dir)
    from pancreas.bundle import Bundle

    assert Bundle.load(first.engine_dir).artifacts("tensorrt")
    second, _ = ep.prepare(env)
    assert second.action == "use-cached-engine" and second.engine_dir == first.engine_dir
