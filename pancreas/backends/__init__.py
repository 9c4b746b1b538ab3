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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from pancreas.bundle import Artifact, Bundle
from pancreas.errors import BundleError, PancreasError

if TYPE_CHECKING:
    from pancreas.engine import EngineConfig

logger = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """A batch of patches in, segmentation and class logits out (all float32)."""

    name: str
    precision: str
    device: str
    patch_size: tuple[int, int, int]
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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an unavailable ``cuda`` is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} was requested but torch sees no CUDA GPU; "
                                      "use device='cpu' or 'auto'")
    if device != "cpu" and not device.startswith("cuda"):
        raise PancreasError(f"device {device!r} is not supported; use auto, cpu or cuda")
    return device


def select_artifacts(bundle: Bundle, backend: str, precision: str) -> list[Artifact]:
    """The artifacts ``backend`` runs at ``precision``: one per fold (first artifact of each fold)."""
    kind = ARTIFACT_KINDS.get(backend, backend)
    arts = bundle.artifacts(kind, precision)
    if not arts and backend in RUNTIME_CAST:
        arts = bundle.artifacts(kind, "fp32")
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


def resolve_backend(bundle: Bundle, config: EngineConfig) -> str:
    """The backend name for ``config.backend`` (``auto``: see :class:`pancreas.engine.EngineConfig`)."""
    if config.backend != "auto":
        if config.backend not in BACKENDS:
            raise PancreasError(f"backend {config.backend!r} is unknown; choose auto or one of {sorted(BACKENDS)}")
        return config.backend
    device = resolve_device(config.device)
    if device.startswith("cuda"):
        if select_artifacts(bundle, "tensorrt", config.precision) and _importable("tensorrt") \
                and _importable(BACKENDS["tensorrt"].split(":")[0]):
            return "tensorrt"
        return "torch"
    if select_artifacts(bundle, "onnxruntime", config.precision):
        return "onnxruntime"
    return "torch"


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
    """Build the backend for ``config`` (one artifact, or every fold of the selected kind/precision)."""
    name = resolve_backend(bundle, config)
    factory = load_factory(name)
    if artifact is not None:
        return factory(bundle, config, artifact)
    arts = select_artifacts(bundle, name, config.precision)
    if not arts:
        kind = ARTIFACT_KINDS.get(name, name)
        have = sorted({f"{a.kind}/{a.precision}" for a in bundle.metadata.artifacts})
        raise BundleError(f"bundle {bundle.root} has no {kind} artifact at precision {config.precision!r} for "
                          f"backend {name!r} (it has {have}); pick another backend/precision or run "
                          "`pancreas optimize`", code="bundle_incomplete")
    members = [factory(bundle, config, art) for art in arts]
    if len(members) == 1:
        return members[0]
    from pancreas.backends.ensemble import EnsembleBackend

    return EnsembleBackend(members)


def patch_size_of(bundle: Bundle, artifact: Artifact | None = None) -> tuple[int, int, int]:
    """The artifact's patch size if recorded, else the configuration's."""
    patch = (artifact.patch_size if artifact is not None else None) or bundle.configuration["patch_size"]
    return tuple(int(p) for p in patch)
