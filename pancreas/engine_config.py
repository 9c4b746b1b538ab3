"""Inference options (:class:`EngineConfig`), read by the engine and by every backend factory.

A module of its own so that the backends can depend on it without importing the engine (which imports
them); importable without torch, so CLIs and the service settings can read its defaults.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pancreas.errors import PancreasError
from pancreas.grid import GridLimits

__all__ = ["ENGINE_STAGES", "EngineConfig"]

T = TypeVar("T")


class OptionError(ValueError, argparse.ArgumentTypeError):
    """A malformed option text: a ``ValueError`` for pydantic settings, shown verbatim by argparse."""

#: The stages :class:`pancreas.engine.Engine` times, in order (keys of ``Prediction.timings_ms`` besides
#: ``total``); the service adds its own (read, queue, encode) around them.
ENGINE_STAGES: tuple[str, ...] = ("coarse", "preprocess", "inference", "resample_back", "export", "postprocess")


@dataclass(frozen=True)
class EngineConfig:
    """Inference options.

    ``backend="auto"``: on a GPU TensorRT (if the bundle has an engine at ``precision`` and TensorRT is
    installed), else torch; on CPU onnxruntime (if the bundle has an ONNX artifact at ``precision``), else
    torch. The backend in the bundle's ``metadata.inference["recommended"]`` (``pancreas optimize``) is
    tried first. ``precision`` picks the artifact (ONNX/TensorRT) or the autocast dtype (torch); ``auto``
    (default) takes the recommended precision for the chosen backend, else the best TensorRT engine
    (int8, fp16, fp32), else fp32 (:func:`pancreas.backends.resolve`).
    ``coarse_factor`` and ``roi_margin`` (a fraction of the patch, per axis) tune coarse-to-fine;
    ``providers`` overrides the onnxruntime execution providers. ``tta`` (mirroring test-time augmentation):
    ``None`` (default) follows the bundle's ``metadata.inference["tta"]`` (off when unset). ``class_weights``:
    one factor per label on the softmax probabilities before the argmax (``(1, 1, 4)`` favours the lesion);
    ``None`` (default) follows ``metadata.inference["class_weights"]`` (plain argmax when unset). ``scales``
    (multi-scale test-time augmentation): factors on the plans' target spacing, one sliding-window pass each,
    probabilities averaged on the original grid (``(1, 1.25)``: the plans' grid and one 1.25x coarser, where
    the case looks 0.8x as large); ``None`` (default) follows ``metadata.inference["scales"]`` (``(1,)``).
    ``mirror_axes``: the network-input axes mirroring TTA flips, every non-empty subset of them (nnU-Net's
    ``allowed_mirroring_axes``, in the order after the plans' ``transpose_forward``; ``(0, 1, 2)``: 8 passes per
    patch, ``(2,)``: 2); ``None`` (default) follows ``metadata.inference["mirror_axes"]`` (all axes).
    ``postprocess=True`` applies the bundle's recorded post-processing (``metadata.inference["postprocessing"]`` options; ``"postprocess": false``
    there turns it off); ``False`` always skips it. ``cudnn_benchmark`` sets ``torch.backends.cudnn.benchmark``
    on CUDA (the sliding window feeds one fixed patch shape, so cuDNN's autotuning pays off after warm-up).
    """

    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 2
    step_size: float = 0.5
    tta: bool | None = None
    class_weights: tuple[float, ...] | None = None
    scales: tuple[float, ...] | None = None
    mirror_axes: tuple[int, ...] | None = None
    coarse_to_fine: bool = False
    postprocess: bool = True
    compile: bool = False
    num_threads: int | None = None
    coarse_factor: float = 2.0
    roi_margin: float = 0.25
    providers: tuple[str, ...] | None = None
    progress: bool = False
    cudnn_benchmark: bool = True
    grid_limits: GridLimits = field(default_factory=GridLimits)  # refuse inputs resampling to huge/empty grids

    def __post_init__(self) -> None:
        for name in ("class_weights", "scales", "mirror_axes"):  # lists (JSON, pydantic) become the tuples a frozen config holds
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        checks = {"batch_size": self.batch_size >= 1, "step_size": 0 < self.step_size <= 1,
                  "coarse_factor": self.coarse_factor > 1, "roi_margin": self.roi_margin >= 0,
                  "num_threads": self.num_threads is None or self.num_threads >= 1,
                  "class_weights": self.class_weights is None or all(w > 0 for w in self.class_weights),
                  "scales": self.scales is None or scales_ok(self.scales),
                  "mirror_axes": self.mirror_axes is None or axes_ok(self.mirror_axes)}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise PancreasError(f"invalid engine option(s) {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}: "
                                "batch_size >= 1, 0 < step_size <= 1, coarse_factor > 1, roi_margin >= 0, "
                                f"num_threads >= 1, class_weights > 0, 0 < scales <= {MAX_SCALE:g}, "
                                f"mirror_axes distinct values of {MIRROR_AXES}")


def class_weight_list(text: str) -> tuple[float, ...]:
    """``"1,1,4"`` -> ``(1.0, 1.0, 4.0)``: the command-line form of ``EngineConfig.class_weights``."""
    return _comma_list(text, float, lambda w: bool(w) and all(x > 0 for x in w),
                       "class weights are comma-separated positive factors, one per label")


#: The largest multi-scale TTA factor (``EngineConfig.scales``): a 4x coarser grid is already a sketch of the case.
MAX_SCALE = 4.0


def scales_ok(scales: Sequence[float]) -> bool:
    """Whether ``scales`` are usable multi-scale TTA factors: at least one, each in (0, ``MAX_SCALE``]."""
    return len(scales) > 0 and all(0 < f <= MAX_SCALE for f in scales)


def _comma_list(text: str, kind: Callable[[str], T], ok: Callable[[tuple[T, ...]], bool], what: str) -> tuple[T, ...]:
    """``text`` split at commas into ``kind`` values; ``ValueError`` naming ``what`` is expected unless ``ok``."""
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not ok(values):
        raise OptionError(f"{text!r}: {what}")
    return values


def scale_list(text: str) -> tuple[float, ...]:
    """``"1,1.25"`` -> ``(1.0, 1.25)``: the command-line form of ``EngineConfig.scales``."""
    return _comma_list(text, float, scales_ok,
                       f"scales are comma-separated target-spacing factors in (0, {MAX_SCALE:g}], e.g. 1,1.25")


#: Every axis of a 3D network input: nnU-Net's default mirroring axes (``EngineConfig.mirror_axes``).
MIRROR_AXES = (0, 1, 2)


def axes_ok(axes: Sequence[int]) -> bool:
    """Whether ``axes`` are usable mirroring axes: one or more distinct values of ``MIRROR_AXES``."""
    return (len(axes) > 0 and len(set(axes)) == len(axes)
            and all(isinstance(a, int) and not isinstance(a, bool) and a in MIRROR_AXES for a in axes))


def mirror_axis_list(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``: the command-line form of ``EngineConfig.mirror_axes``."""
    return _comma_list(text, int, axes_ok, f"mirror axes are comma-separated distinct axes of {MIRROR_AXES}, e.g. 2 or 1,2")
