"""Benchmark candidates: which predictors ``pancreas bench compare`` runs, and the runner for each.

A :class:`Candidate` is a name, a runner kind (``nnunet`` or ``engine``), a bundle and the runner's options.
:func:`discover` builds the list from a table of recipes (:data:`RECIPES`); a recipe is skipped, with the
reason logged, when the machine or the bundle cannot run it (fp16/TensorRT without a GPU, int8 without an
int8 ONNX artifact, ...). Runners live in :data:`RUNNERS`; the worker process (``benchmarks.candidate_worker``) looks
them up by kind, so the orchestrator never branches on what it runs.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pancreas.backends import cpu_has_native_bf16
from pancreas.bundle import Bundle
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

BASELINE = "nnunet-default"
#: the second reference row: nnU-Net's predictor without mirroring TTA
NO_TTA = "nnunet-no-tta"
#: recipes that run on CPU only when --candidates names them, and why
CPU_OPT_IN: dict[str, str] = {"torch-compiled-fp32-c2f": "torch.compile takes minutes on a small CPU",
                              "torch-fp32-tta": "8 mirrored passes; ort-fp32-tta is the default mirrored row",
                              "torch-fp32-tta-x": "a speed/accuracy trade-off: one mirrored axis",
                              "torch-bf16-tta-x": "a speed/accuracy trade-off: one mirrored axis"}


@dataclass(frozen=True)
class Candidate:
    """One predictor to benchmark."""

    name: str
    runner: str  # key of RUNNERS
    bundle: str  # bundle folder
    options: dict[str, Any] = field(default_factory=dict)
    #: how many repeats this candidate runs (None: the global --repeats)
    repeats: int | None = None

    @property
    def is_nnunet(self) -> bool:
        return self.runner == "nnunet"


@dataclass(frozen=True)
class Environment:
    """What the machine offers (decides which recipes are runnable)."""

    cuda: bool
    tensorrt: bool
    ort_cuda: bool
    #: the CPU computes bfloat16 natively (AVX512-BF16 / AMX): bf16 autocast rows run on CPU too
    cpu_bf16: bool = False

    @classmethod
    def detect(cls) -> Environment:
        import torch

        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, tensorrt=importlib.util.find_spec("tensorrt") is not None,
                   ort_cuda=cuda and ort_cuda_runs(), cpu_bf16=cpu_has_native_bf16())

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


def ort_cuda_runs() -> bool:
    """Whether onnxruntime really runs a session on CUDA (the provider can be listed and fail to load)."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return False
    import onnxruntime
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure means: no working CUDA provider
        logger.info("onnxruntime's CUDA provider does not start: %s", exc)
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"


# ---- recipes --------------------------------------------------------------------------------------------
#: recipe(bundle, env) -> (name, runner, options) or a string saying why it cannot run
Recipe = Callable[[Bundle, Environment], "tuple[str, str, dict[str, Any]] | str"]


def _has(bundle: Bundle, kind: str, precision: str) -> bool:
    """Whether ``bundle`` (every member of an ensemble bundle) has a ``kind`` artifact at ``precision``."""
    if bundle.is_ensemble:
        return all(_has(member, kind, precision) for member in bundle.members.values())
    return bool(bundle.artifacts(kind, precision))  # type: ignore[arg-type]


def _nnunet(mirroring: bool) -> Recipe:
    def recipe(bundle: Bundle, env: Environment) -> tuple[str, str, dict[str, Any]] | str:
        if not bundle.artifacts("torch"):
            return "no torch artifact"
        name = "nnunet-default" if mirroring else "nnunet-no-tta"
        return name, "nnunet", {"use_mirroring": mirroring, "device": env.device}
    return recipe


def _engine(name: str, backend: str, precision: str, artifact: str, *, compile: bool = False,
            coarse_to_fine: bool = True, needs: str | None = None, tta: bool = False,
            one_scale: bool = False, mirror_axes: tuple[int, ...] | None = None) -> Recipe:
    """An engine row; ``one_scale`` runs the plans' grid only where the bundle records multi-scale TTA (the
    other rows follow the bundle's ``inference.scales``); ``mirror_axes`` flips only those axes with TTA."""
    def recipe(bundle: Bundle, env: Environment) -> tuple[str, str, dict[str, Any]] | str:
        if one_scale and len(bundle.metadata.inference.get("scales", [1.0])) < 2:
            return "the bundle records no multi-scale TTA (every row runs one scale)"
        if needs == "cuda" and not env.cuda:
            return "needs a CUDA GPU"
        if needs == "bf16" and not (env.cuda or env.cpu_bf16):
            return "needs a GPU or a CPU with native bf16 (AVX512-BF16 / AMX)"
        if needs == "tensorrt" and not (env.cuda and env.tensorrt):
            return "needs a CUDA GPU and the tensorrt package"
        if backend == "onnxruntime" and env.cuda and not env.ort_cuda:
            return "onnxruntime's CUDA provider does not run here (no CPU onnxruntime rows on a GPU host)"
        if not _has(bundle, artifact, "fp32" if artifact == "torch" else precision):
            return f"bundle has no {artifact} {precision} artifact"
        device = "cuda" if env.cuda and (backend != "onnxruntime" or env.ort_cuda) else "cpu"
        options = {"backend": backend, "precision": precision, "device": device, "tta": tta,
                   "coarse_to_fine": coarse_to_fine, "compile": compile}
        if one_scale:
            options["scales"] = [1.0]
        if mirror_axes is not None:
            options["mirror_axes"] = list(mirror_axes)
        return name, "engine", options
    return recipe


#: (recipe name, recipe); order is the table's order
RECIPES: tuple[tuple[str, Recipe], ...] = (
    ("nnunet-default", _nnunet(True)),
    ("nnunet-no-tta", _nnunet(False)),
    ("torch-fp32", _engine("torch-fp32", "torch", "fp32", "torch", coarse_to_fine=False)),
    ("torch-fp32-c2f", _engine("torch-fp32-c2f", "torch", "fp32", "torch")),
    ("torch-compiled-fp32-c2f", _engine("torch-compiled-fp32-c2f", "torch", "fp32", "torch", compile=True)),
    ("torch-fp16", _engine("torch-fp16", "torch", "fp16", "torch", coarse_to_fine=False, needs="cuda")),
    ("torch-fp16-c2f", _engine("torch-fp16-c2f", "torch", "fp16", "torch", needs="cuda")),
    ("torch-compiled-fp16", _engine("torch-compiled-fp16", "torch", "fp16", "torch", compile=True,
                                    coarse_to_fine=False, needs="cuda")),
    ("torch-compiled-fp16-c2f", _engine("torch-compiled-fp16-c2f", "torch", "fp16", "torch", compile=True,
                                        needs="cuda")),
    ("ort-fp32", _engine("ort-fp32", "onnxruntime", "fp32", "onnx", coarse_to_fine=False)),
    ("ort-fp32-c2f", _engine("ort-fp32-c2f", "onnxruntime", "fp32", "onnx")),
    # with mirroring TTA, as nnunet-default mirrors (and as a bundle recording inference.tta runs by default)
    ("ort-fp32-tta", _engine("ort-fp32-tta", "onnxruntime", "fp32", "onnx", coarse_to_fine=False, tta=True)),
    ("torch-fp32-tta", _engine("torch-fp32-tta", "torch", "fp32", "torch", coarse_to_fine=False, tta=True)),
    # mirroring only the last network axis (x for these plans): 2 passes per patch instead of 8
    ("torch-fp32-tta-x", _engine("torch-fp32-tta-x", "torch", "fp32", "torch", coarse_to_fine=False, tta=True,
                                 mirror_axes=(2,))),
    # bf16 autocast (a bundle's `pancreas optimize --recipe bf16`): GPUs and CPUs with native bf16 only
    ("torch-bf16", _engine("torch-bf16", "torch", "bf16", "torch", coarse_to_fine=False, needs="bf16")),
    ("torch-bf16-tta", _engine("torch-bf16-tta", "torch", "bf16", "torch", coarse_to_fine=False, tta=True,
                               needs="bf16")),
    # the same without the bundle's multi-scale TTA: what the extra scales cost and give
    ("torch-bf16-tta-1scale", _engine("torch-bf16-tta-1scale", "torch", "bf16", "torch", coarse_to_fine=False,
                                      tta=True, needs="bf16", one_scale=True)),
    ("torch-bf16-tta-x", _engine("torch-bf16-tta-x", "torch", "bf16", "torch", coarse_to_fine=False, tta=True,
                                 needs="bf16", mirror_axes=(2,))),
    ("ort-int8-c2f", _engine("ort-int8-c2f", "onnxruntime", "int8", "onnx")),
    ("ort-fp16-c2f", _engine("ort-fp16-c2f", "onnxruntime", "fp16", "onnx", needs="cuda")),
    ("tensorrt-fp16-c2f", _engine("tensorrt-fp16-c2f", "tensorrt", "fp16", "tensorrt", needs="tensorrt")),
    ("tensorrt-int8-c2f", _engine("tensorrt-int8-c2f", "tensorrt", "int8", "tensorrt", needs="tensorrt")),
)


def discover(bundles: list[Path], *, patterns: list[str] | None = None, env: Environment | None = None,
             baseline_repeats: int | None = None) -> list[Candidate]:
    """All runnable candidates for ``bundles`` (the first one feeds nnU-Net), filtered by glob ``patterns``.

    With several bundles, engine candidates of the 2nd, 3rd ... bundle get ``@<folder name>`` appended.
    Raises PancreasError when nothing matches.
    """
    env = env or Environment.detect()
    out: list[Candidate] = []
    torch_weights: set[str] = set()
    for i, path in enumerate(bundles):
        bundle = Bundle.load(path)
        shas = {a.sha256 or f"{path}/{a.path}" for a in bundle.artifacts("torch")}
        same_torch = bool(shas) and shas <= torch_weights
        torch_weights |= shas
        for recipe_name, recipe in RECIPES:
            got = recipe(bundle, env)
            if isinstance(got, str):
                logger.info("%s on %s: skipped (%s)", recipe_name, path, got)
                continue
            name, runner, options = got
            if i > 0 and (runner == "nnunet" or (options.get("backend") == "torch" and same_torch)):
                continue  # nnU-Net runs the first bundle only; identical torch weights run once
            if name in CPU_OPT_IN and not env.cuda and not any(fnmatch.fnmatch(name, p) for p in patterns or []):
                logger.info("%s: skipped on CPU unless --candidates names it (%s)", name, CPU_OPT_IN[name])
                continue
            if i > 0:
                name = f"{name}@{path.name}"
            reps = baseline_repeats if runner == "nnunet" else None
            out.append(Candidate(name, runner, str(path), options, reps))
    if patterns:
        out = [c for c in out if c.name == BASELINE or any(fnmatch.fnmatch(c.name, p) for p in patterns)]
    if not any(c.runner == "engine" for c in out):
        raise PancreasError(f"no candidate matches --candidates {patterns!r}; available recipes: "
                            f"{[name for name, _ in RECIPES]}")
    return out


# ---- runners (used inside the worker process) -------------------------------------------------------------
class Runner(Protocol):
    info: dict[str, Any]

    def warmup(self, image: str) -> None: ...

    def predict_file(self, image: str, output: str) -> dict[str, float]:
        """Predict file → mask file; return per-stage times in ms."""


class NnUNetRunner:
    def __init__(self, bundle: Bundle, options: dict[str, Any]) -> None:
        import torch

        from benchmarks.nnunet_baseline import NnUNetBaseline, NnUNetSettings

        self._baseline = NnUNetBaseline(bundle, NnUNetSettings(**options))
        self.info = {"settings": self._baseline.settings.as_dict(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "autocast": "fp16" if self._baseline.settings.device.startswith("cuda") else None}

    def warmup(self, image: str) -> None:
        self._baseline.warmup()

    def predict_file(self, image: str, output: str) -> dict[str, float]:
        return self._baseline.predict_file(image, output)


class EngineRunner:
    def __init__(self, bundle: Bundle, options: dict[str, Any]) -> None:
        import torch

        from pancreas.engine import Engine, EngineConfig

        self._engine = Engine.from_bundle(bundle, EngineConfig(**options))
        self.info = {**self._engine.info, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}

    def warmup(self, image: str) -> None:
        self._engine.warmup()

    def predict_file(self, image: str, output: str) -> dict[str, float]:
        pred = self._engine.predict_file(image, output)
        return {k: float(v) for k, v in pred.timings_ms.items() if k != "total"}


RUNNERS: dict[str, Callable[[Bundle, dict[str, Any]], Runner]] = {
    "nnunet": NnUNetRunner,
    "engine": EngineRunner,
}
