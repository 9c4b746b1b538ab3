"""PyTorch backend: the bundle's state dict in a :class:`~pancreas.network.MultiTaskUNet`.

CPU or CUDA; fp32, or fp16/bf16 autocast (fp16 only on CUDA); optional ``torch.compile``. The same class
serves ``torch_export`` artifacts (``torch.export`` programs and AOTInductor packages, backend
``torch_export``). The backend
accepts numpy arrays (contract) and torch tensors (``accepts_tensors``; no host round trip on the GPU)
and answers in the same type, on the input's device.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pancreas.backends import BackendUnavailableError, patch_size_of, resolve_device
from pancreas.bundle import Artifact, Bundle
from pancreas.errors import BundleError

if TYPE_CHECKING:
    from pancreas.engine_config import EngineConfig

logger = logging.getLogger(__name__)

#: precision -> autocast dtype (None: plain fp32)
AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` on ``device_type`` (``cpu``/``cuda``); fp32 runs without one."""
    dtype = AUTOCAST[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)


class TorchBackend:
    """Wraps an eval-mode network whose forward returns ``(seg logits, class logits)``."""

    name = "torch"
    accepts_tensors = True

    def __init__(self, network: torch.nn.Module, *, patch_size: tuple[int, int, int], device: str = "cpu",
                 precision: str = "fp32", max_batch: int = 64, compile: bool = False) -> None:
        if precision not in AUTOCAST:
            raise BackendUnavailableError(f"torch backend precision {precision!r} is not supported; use "
                                          f"{sorted(AUTOCAST)} (int8 runs through onnxruntime or tensorrt)")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendUnavailableError("fp16 autocast needs CUDA; use precision='fp32' (or 'bf16') on CPU")
        self.device = device
        self.precision = precision
        self.patch_size = tuple(int(p) for p in patch_size)
        self.max_batch = int(max_batch)
        net = network.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.network = torch.compile(net, dynamic=False) if compile else net
        self.compiled = bool(compile)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, "cuda" if self.device.startswith("cuda") else "cpu")

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            seg, cls = self.network(x.to(self.device, non_blocking=True))
        if isinstance(seg, (list, tuple)):  # deep supervision left on: highest resolution first
            seg = seg[0]
        return seg.float(), cls.float()

    def __call__(self, patches: Any) -> tuple[Any, Any]:
        if isinstance(patches, torch.Tensor):
            seg, cls = self.forward(patches)
            return seg.to(patches.device), cls.to(patches.device)
        seg, cls = self.forward(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)))
        return seg.cpu().numpy(), cls.cpu().numpy()


def load_state_dict(bundle: Bundle, artifact: Artifact) -> dict[str, torch.Tensor]:
    path = bundle.path(artifact)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise BundleError(f"bundle artifact {path} is not a loadable torch state dict ({exc})",
                          code="bundle_corrupt") from exc
    if not isinstance(state, dict):
        raise BundleError(f"bundle artifact {path} holds {type(state).__name__}, not a state dict",
                          code="bundle_corrupt")
    return state


def create(bundle: Bundle, config: EngineConfig, artifact: Artifact) -> TorchBackend:
    """Factory registered as ``torch`` in :data:`pancreas.backends.BACKENDS`."""
    from pancreas.network import load_network

    if artifact.kind != "torch":
        raise BundleError(f"torch backend cannot load a {artifact.kind} artifact ({artifact.path})")
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        net = load_network(bundle.plans, bundle.metadata.network, load_state_dict(bundle, artifact))
    except RuntimeError as exc:  # strict load: missing/unexpected keys, shape mismatch
        raise BundleError(f"bundle artifact {bundle.path(artifact)} does not match the network in "
                          f"configs/metadata.json ({str(exc).splitlines()[0]})", code="bundle_corrupt") from exc
    device = resolve_device(config.device)
    logger.info("torch backend: %s on %s, %s%s", artifact.path, device, config.precision,
                " (compiled)" if config.compile else "")
    return TorchBackend(net, patch_size=patch_size_of(bundle, artifact), device=device, precision=config.precision,
                        compile=config.compile)


class ProgramModule(torch.nn.Module):
    """An ``nn.Module`` around a loaded exported program, so backends can call ``.eval()``/``.to()`` on it.

    The program's module refuses ``train``/``eval``; it is held outside the module tree (it is always in
    inference form) and only its forward is used.
    """

    def __init__(self, program: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_program", program)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._program(image)


def load_program(path: str | Path, *, fmt: str = "exported_program", device: str = "cpu") -> ProgramModule:
    """Load a ``torch.export`` program (``exported_program``) or an AOTInductor package (``aoti_package``).

    An exported program is moved to ``device`` with ``torch.export.passes.move_to_device_pass``: it
    rewrites the weights *and* the ``_assert_tensor_metadata(device=...)`` checks recorded at export time,
    which ``.module().to(device)`` leaves on the export device ("Tensor device mismatch" on the first
    call). An AOTInductor package runs on the device type it was compiled for; ``device`` only picks the
    CUDA index.
    """
    from torch.export.passes import move_to_device_pass

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"compiled artifact {path} does not exist; run `pancreas optimize --recipe compile`",
                          code="bundle_incomplete")
    if fmt == "aoti_package":
        index = torch.device(device).index
        return ProgramModule(torch._inductor.aoti_load_package(str(path), device_index=-1 if index is None
                                                               else index))
    if fmt != "exported_program":
        raise BundleError(f"unknown compiled format {fmt!r}; expected exported_program or aoti_package",
                          code="bundle_corrupt")
    return ProgramModule(move_to_device_pass(torch.export.load(str(path)), device).module())


def exported_device(artifact: Artifact, requested: str) -> str:
    """The device a ``torch_export`` artifact runs on: an AOTInductor package only on its compile device type
    (``info["device"]``); ``requested`` is the resolved engine device."""
    if artifact.info.get("format") != "aoti_package":
        return requested
    built = str(artifact.info.get("device", "cpu"))
    if torch.device(built).type == torch.device(requested).type:
        return requested
    raise BackendUnavailableError(f"AOTInductor package {artifact.path} was compiled for {built!r} and cannot run "
                                  f"on {requested!r}; serve it with device={built!r}, or rebuild it with "
                                  f"`pancreas optimize --recipe compile:aoti --compile-device {requested}`")


def create_exported(bundle: Bundle, config: EngineConfig, artifact: Artifact) -> TorchBackend:
    """Factory registered as ``torch_export``: a compiled artifact (``pancreas optimize --recipe compile``)
    served by :class:`TorchBackend` (fp32; its batch is bounded by the exported dynamic batch).

    With ``device="auto"`` an AOTInductor package runs on the device it was compiled for."""
    if artifact.kind != "torch_export":
        raise BundleError(f"torch_export backend cannot load a {artifact.kind} artifact ({artifact.path})")
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    fmt = str(artifact.info.get("format", "exported_program"))
    wanted = config.device
    if config.device == "auto" and fmt == "aoti_package":
        wanted = str(artifact.info.get("device", "cpu"))
    device = exported_device(artifact, resolve_device(wanted))
    net = load_program(bundle.path(artifact), fmt=fmt, device=device)
    logger.info("torch_export backend: %s (%s) on %s", artifact.path, fmt, device)
    return TorchBackend(net, patch_size=patch_size_of(bundle, artifact), device=device, precision="fp32",
                        max_batch=int(artifact.info.get("max_batch", 4)))
