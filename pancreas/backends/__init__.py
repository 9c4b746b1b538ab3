"""Inference backends behind one small interface, looked up by name in a registry.

A backend turns a batch of patches into logits::

    seg_logits, cls_logits = backend(patches)   # float32 [B,1,*patch] -> ([B,3,*patch], [B,3])

:data:`BACKENDS` maps a name to ``"module:factory"``; modules are imported only when a backend is created,
so an uninstalled runtime (TensorRT, onnxruntime-gpu) costs nothing until asked for. A factory has the
signature ``factory(bundle, config, artifact) -> Backend`` and builds one backend from one bundle artifact.
Optional capability: a backend with ``accepts_tensors = True`` is also called with torch tensors on its
device (and must then answer with tensors), which saves host round trips on the GPU; the torch backend
does this. Adding a backend is one line (the module must exist and define the factory)::

    register_backend("tensorrt", "pancreas.backends.tensorrt_backend:create", artifact_kind="tensorrt")

:func:`create_backend` picks the artifacts for the backend and precision; several folds of the same kind
and precision become one :class:`~pancreas.backends.ensemble.EnsembleBackend` (softmax averaging), so the
engine never knows how many models or which runtime it drives.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from pancreas.bundle import Artifact, Bundle
from pancreas.errors import BundleError, PancreasError

if TYPE_CHECKING:
    from pancreas.engine_config import EngineConfig

logger = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """A batch of patches in, segmentation and class logits out (all float32)."""

    name: str
    precision: str
    device: str
    patch_size: tuple[int, ...]  # (d, h, w); a 2D network's (h, w), seen as (1, h, w) through create_backend
    max_batch: int

    def __call__(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class BackendUnavailableError(PancreasError):
    """The requested backend, device or precision cannot run here."""

    code = "backend_unavailable"


#: backend name -> "module:factory"
BACKENDS: dict[str, str] = {
    "torch": "pancreas.backends.torch_backend:create",
    "onnxruntime": "pancreas.backends.onnxruntime_backend:create",
    "tensorrt": "pancreas.backends.tensorrt_backend:create",
    "torch_export": "pancreas.backends.torch_backend:create_exported",
}
#: backend name -> the bundle artifact kind it loads
ARTIFACT_KINDS: dict[str, str] = {"torch": "torch", "onnxruntime": "onnx", "tensorrt": "tensorrt",
                                  "torch_export": "torch_export"}
#: backends that can run an fp32 artifact at another precision (autocast) when no such artifact exists
RUNTIME_CAST: set[str] = {"torch"}


def register_backend(name: str, target: str, *, artifact_kind: str | None = None,
                     runtime_cast: bool = False) -> None:
    """Register (or replace) a backend: ``target`` is ``"module:factory"``."""
    if ":" not in target:
        raise ValueError(f"backend target {target!r} must look like 'package.module:factory'")
    BACKENDS[name] = target
    ARTIFACT_KINDS[name] = artifact_kind or name
    if runtime_cast:
        RUNTIME_CAST.add(name)


#: CPU flags (Linux ``/proc/cpuinfo``) of native bfloat16 arithmetic; without them oneDNN emulates bf16
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast beats fp32;
    ``False`` when the flags cannot be read."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an unavailable ``cuda`` is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise PancreasError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} was requested but torch sees no CUDA GPU; "
                                      "use device='cpu' or 'auto'")
    if device.startswith("cuda"):
        try:
            index = torch.device(device).index
        except RuntimeError as exc:
            raise PancreasError(f"device {device!r} is not a valid CUDA device; use cuda or cuda:N") from exc
        if index is not None and index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {device!r} does not exist: torch sees "
                                          f"{torch.cuda.device_count()} CUDA GPU(s)")
    return device


def cuda_index(device: str) -> int:
    """The CUDA device index of ``device`` (``cuda`` -> the current device)."""
    import torch

    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else int(index)


def select_artifacts(bundle: Bundle, backend: str, precision: str) -> list[Artifact]:
    """The artifacts ``backend`` runs at ``precision``: one per fold (first artifact of each fold)."""
    kind = ARTIFACT_KINDS.get(backend, backend)
    arts = bundle.artifacts(kind, precision)
    if not arts and backend in RUNTIME_CAST:
        arts = bundle.artifacts(kind, "fp32")
    # an artifact written for another runtime (info.target, e.g. TensorRT's symmetric INT8 ONNX) comes last
    arts = sorted(arts, key=lambda a: a.info.get("target", backend) != backend)
    by_fold: dict[Any, Artifact] = {}
    for art in arts:
        by_fold.setdefault(art.fold, art)
    if len(by_fold) < len(arts):
        logger.info("bundle %s has several %s/%s artifacts per fold; using the first of each",
                    bundle.root, kind, precision)
    return list(by_fold.values())


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: ``backend="auto"``: candidates per device type, best first; the bundle's recommended backend
#: (``metadata.inference["recommended"]``, written by ``pancreas optimize``) moves to the front
AUTO_BACKENDS: dict[str, tuple[str, ...]] = {"cuda": ("tensorrt", "torch"), "cpu": ("onnxruntime", "torch")}
#: ``precision="auto"``: precisions a backend tries, best first, when the bundle recommends none for it
#: (any other backend, and every backend without matching artifacts, runs fp32)
AUTO_PRECISIONS: dict[str, tuple[str, ...]] = {"tensorrt": ("int8", "fp16", "fp32")}
#: What a user may ask for (CLI choices, service settings); backends come from :func:`backend_choices`.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16", "int8")


def backend_choices() -> tuple[str, ...]:
    """``auto`` plus every registered backend name."""
    return ("auto", *BACKENDS)


def recommended(bundle: Bundle) -> tuple[str | None, str | None]:
    """``(backend, precision)`` of ``metadata.inference["recommended"]`` (``None`` where unset)."""
    rec = bundle.metadata.inference.get("recommended")
    if not isinstance(rec, dict):
        return None, None
    return rec.get("backend"), rec.get("precision")


def resolve_precision(bundle: Bundle, backend: str, precision: str) -> str:
    """``precision``, or for ``auto``: the bundle's recommended precision when it recommends ``backend``
    and has those artifacts, else the first of :data:`AUTO_PRECISIONS` it has, else ``fp32``."""
    if precision != "auto":
        return precision
    rec_backend, rec_precision = recommended(bundle)
    if rec_backend == backend and rec_precision and select_artifacts(bundle, backend, rec_precision):
        return str(rec_precision)
    return next((p for p in AUTO_PRECISIONS.get(backend, ()) if select_artifacts(bundle, backend, p)), "fp32")


def _runnable(bundle: Bundle, backend: str, precision: str) -> bool:
    """Whether ``backend`` has what it needs here: its runtime (TensorRT) and artifacts at ``precision``."""
    if backend == "tensorrt" and not (_importable("tensorrt") and _importable(BACKENDS["tensorrt"].split(":")[0])):
        return False
    return backend in RUNTIME_CAST or bool(select_artifacts(bundle, backend, precision))


def resolve(bundle: Bundle, config: EngineConfig) -> tuple[str, str]:
    """``(backend, precision)`` for ``config``, with ``auto`` resolved (see :class:`pancreas.engine.EngineConfig`)."""
    if config.backend != "auto":
        if config.backend not in BACKENDS:
            raise PancreasError(f"backend {config.backend!r} is unknown; choose auto or one of {sorted(BACKENDS)}")
        precision = resolve_precision(bundle, config.backend, config.precision)
        return config.backend, _native(precision, config.precision, config.device)
    device = resolve_device(config.device)
    candidates = list(AUTO_BACKENDS["cuda" if device.startswith("cuda") else "cpu"])
    rec_backend, _ = recommended(bundle)
    if rec_backend in candidates:
        candidates.insert(0, candidates.pop(candidates.index(rec_backend)))
    for name in candidates:
        precision = _native(resolve_precision(bundle, name, config.precision), config.precision, device)
        if _runnable(bundle, name, precision):
            return name, precision
    return "torch", _native(resolve_precision(bundle, "torch", config.precision), config.precision, device)


def _native(precision: str, asked: str, device: str) -> str:
    """A bf16 recommendation taken by ``precision="auto"`` on a CPU that would only emulate bf16 (slower than
    fp32 there) runs fp32 instead; an explicit ``bf16`` is kept."""
    if precision != "bf16" or asked != "auto" or resolve_device(device) != "cpu":
        return precision
    if not cpu_has_native_bf16():
        logger.info("bundle recommends bf16, but this CPU has no native bf16 (%s): running fp32",
                    "/".join(BF16_CPU_FLAGS))
        return "fp32"
    return precision


def resolve_backend(bundle: Bundle, config: EngineConfig) -> str:
    """The backend name for ``config.backend`` (``auto`` resolved; see :func:`resolve`)."""
    return resolve(bundle, config)[0]


def load_factory(name: str) -> Any:
    target = BACKENDS.get(name)
    if target is None:
        raise PancreasError(f"backend {name!r} is unknown; choose one of {sorted(BACKENDS)}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} cannot be loaded ({exc}); install its runtime or "
                                      "choose another backend") from exc
    return getattr(module, attr)


def create_backend(bundle: Bundle, config: EngineConfig, artifact: Artifact | None = None) -> Backend:
    """Build the backend for ``config`` (one artifact, or every fold of the selected kind/precision).

    A 2D network's backends come wrapped for the sliding window (:mod:`pancreas.backends.slices`).
    """
    from pancreas.backends.slices import for_window

    name, precision = resolve(bundle, config)
    if (name, precision) != (config.backend, config.precision):
        logger.info("backend %s/%s resolved to %s at %s (bundle recommends %s)", config.backend, config.precision,
                    name, precision, "/".join(str(r) for r in recommended(bundle)))
        config = replace(config, precision=precision)
    factory = load_factory(name)
    if artifact is not None:
        return for_window(factory(bundle, config, artifact))
    arts = select_artifacts(bundle, name, config.precision)
    if not arts:
        kind = ARTIFACT_KINDS.get(name, name)
        have = sorted({f"{a.kind}/{a.precision}" for a in bundle.metadata.artifacts})
        raise BundleError(f"bundle {bundle.root} has no {kind} artifact at precision {config.precision!r} for "
                          f"backend {name!r} (it has {have}); pick another backend/precision or run "
                          "`pancreas optimize`", code="bundle_incomplete")
    members = [for_window(factory(bundle, config, art)) for art in arts]
    if len(members) == 1:
        return members[0]
    from pancreas.backends.ensemble import EnsembleBackend

    return EnsembleBackend(members)


def patch_size_of(bundle: Bundle, artifact: Artifact | None = None) -> tuple[int, ...]:
    """The network's patch size (3 entries, 2 for a 2D network): the artifact's if recorded, else the configuration's."""
    patch = (artifact.patch_size if artifact is not None else None) or bundle.configuration["patch_size"]
    return tuple(int(p) for p in patch)
