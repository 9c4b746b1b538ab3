"""The typed configuration of ``pancreas optimize``: :class:`OptimizeOptions` and its per-stage parts.

Importing this module does not import torch or onnx, so the CLI (:mod:`optimize.cli`) reads its flag
defaults from these dataclasses at ``--help`` time. Each stage's options live beside the stage
(:class:`~optimize.export_onnx.OnnxExportConfig`, :class:`~optimize.quantize.Int8Config`,
:class:`~optimize.distill.DistillConfig`, :class:`~pancreas.backends.tensorrt_build.TrtBuildConfig`, ...);
:class:`CompileConfig` lives here because :mod:`optimize.compile` needs torch at import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optimize.distill import DistillConfig, NnUNetFinetune
from optimize.export_onnx import OnnxExportConfig
from optimize.fp16 import Fp16Config
from optimize.quantize import Int8Config
from pancreas.backends.tensorrt_build import TrtBuildConfig

__all__ = ["CompileConfig", "OptimizeOptions", "options_dict"]


@dataclass(frozen=True)
class CompileConfig:
    """Options of the ``compile`` recipe (:mod:`optimize.compile`).

    Args:
        max_batch: upper bound of the dynamic batch axis.
        aoti: also build an AOTInductor package (slow on CPU: minutes of C++ compilation).
        device: device the AOTInductor package is compiled for: ``auto`` (CUDA when torch sees a GPU),
            ``cpu``, ``cuda`` or ``cuda:N``.
    """

    max_batch: int = 8
    aoti: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class OptimizeOptions:
    """Data sizes and per-stage options of :func:`optimize.recipes.optimize_bundle`."""

    data: Path | None = None
    calib_cases: int = 8
    calib_per_case: int = 2
    val_cases: int = 6
    val_per_case: int = 2
    train_cases: int = 12
    train_per_case: int = 4
    train_fg_fraction: float = 0.67
    train_lesion_fraction: float = 0.33
    parity_patches: int = 4
    fold: int | str | None = None
    seed: int = 0
    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    int8: Int8Config = field(default_factory=Int8Config)
    finetune: DistillConfig = field(default_factory=DistillConfig)
    nnunet: NnUNetFinetune | None = None  # fine-tune prune/distill with nnU-Net's loop (training package)
    trt: TrtBuildConfig = field(default_factory=TrtBuildConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    command: str | None = None


def options_dict(options: OptimizeOptions) -> dict[str, Any]:
    """``options`` as JSON-ready data (paths as strings)."""
    d = asdict(options)
    d["data"] = str(options.data) if options.data else None
    if options.nnunet is not None:
        d["nnunet"]["workdir"] = str(options.nnunet.workdir)
    return d
