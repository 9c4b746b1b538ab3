"""Compiled torch paths: ``torch.export`` programs (``.pt2``) and AOTInductor packages.

* :func:`export_program` traces the network once with a dynamic batch axis and saves the
  ``ExportedProgram`` (artifact kind ``torch_export``, ``info.format = "exported_program"``). Loading it
  (:func:`pancreas.backends.torch_backend.load_program`) needs no Python model code; the ``torch_export``
  backend serves it with :class:`pancreas.backends.torch_backend.TorchBackend`
  (``pancreas serve --model B --backend torch_export``).
* :func:`aoti_package` additionally compiles the program ahead of time with AOTInductor into a
  ``.pt2`` package of generated C++/CUDA kernels (``info.format = "aoti_package"``, ``info.device``); it
  needs a C++ compiler and runs only on the device type it was compiled for (``CompileConfig.device``,
  ``pancreas optimize --compile-device``). The network is traced on that device from a copy, so the
  caller's network stays where it was. No GPU timing of these packages has been measured in this project.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optimize.options import CompileConfig
from pancreas.backends import resolve_device
from pancreas.backends.torch_backend import ProgramModule, load_program
from pancreas.bundle import input_channels_of
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

__all__ = ["CompileConfig", "CompileError", "ProgramModule", "aoti_package", "compile_device", "export_program",
           "load_program"]


class CompileError(PancreasError):
    code = "compile_failed"


class _Outputs(nn.Module):
    """Return a plain (seg, cls) tuple without deep supervision (export-friendly signature)."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Any) -> tuple[Any, Any]:
        seg, cls = self.net(image)
        return seg, cls


def _export(net: Any, patch_size: list[int] | tuple[int, ...], max_batch: int, device: str = "cpu") -> Any:
    """``torch.export`` of ``net`` (already on ``device``) with an example batch on ``device``."""
    if getattr(net, "deep_supervision", False):
        raise CompileError("torch.export needs deep supervision off: build the network with deep_supervision=False")
    example = torch.randn(2, input_channels_of(net), *[int(p) for p in patch_size], device=device)
    batch = torch.export.Dim("batch", min=1, max=max(2, int(max_batch)))
    try:
        return torch.export.export(_Outputs(net.eval()), (example,), dynamic_shapes={"image": {0: batch}})
    except Exception as exc:
        raise CompileError(f"torch.export failed for patch {list(patch_size)}: {exc}") from exc


def export_program(net: Any, patch_size: list[int] | tuple[int, ...], out: str | Path, *,
                   config: CompileConfig = CompileConfig()) -> Path:  # noqa: B008 (frozen dataclass)
    """Export ``net`` with a dynamic batch axis (1..max_batch) and save the program to ``out`` (.pt2).

    The program is traced where ``net`` is (CPU in ``pancreas optimize``); loading moves it to the serving
    device (:func:`~pancreas.backends.torch_backend.load_program`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.export.save(_export(net, patch_size, config.max_batch), str(out))
    logger.info("exported program %s in %.1f s", out, time.perf_counter() - t0)
    return out


def compile_device(config: CompileConfig) -> str:
    """The device an AOTInductor package is built for (``config.device`` with ``auto`` resolved)."""
    return resolve_device(config.device)


def aoti_package(net: Any, patch_size: list[int] | tuple[int, ...], out: str | Path, *,
                 config: CompileConfig = CompileConfig(aoti=True)) -> Path:  # noqa: B008 (frozen dataclass)
    """Compile ``net`` ahead of time with AOTInductor into the package ``out`` (.pt2) for
    :func:`compile_device` (``net`` itself is not moved)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = compile_device(config)
    program = _export(copy.deepcopy(net).to(device), patch_size, config.max_batch, device)
    t0 = time.perf_counter()
    try:
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(out))
    except Exception as exc:
        raise CompileError(f"AOTInductor compilation failed ({exc}); a C++ compiler (g++) is required") from exc
    logger.info("AOTInductor package %s in %.1f s", path, time.perf_counter() - t0)
    return Path(path)
