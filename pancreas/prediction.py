"""What an engine returns (:class:`Prediction`, :class:`SoftPrediction`) and how it is assembled and timed.

Shared by :mod:`pancreas.engine` (one configuration) and :mod:`pancreas.ensemble_engine` (several), so neither
imports the other's internals.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pancreas import LABELS
from pancreas.domain import InputDomain, InputWarning
from pancreas.engine_config import MAX_SCALE, MIRROR_AXES, EngineConfig, axes_ok, scales_ok
from pancreas.errors import PancreasError
from pancreas.nifti import Volume, read_volume
from pancreas.postprocess import PostprocessConfig, postprocess
from pancreas.preprocess import argmax_labels


@dataclass
class Prediction:
    mask: np.ndarray  # uint8 (z, y, x), canonical space, same shape as Volume.array
    probabilities: list[float]  # subtype probabilities (sum 1)
    subtype: int
    volumes_ml: dict[str, float]  # {"pancreas": labels 1 ∪ 2, "lesion": label 2}
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[InputWarning] = field(default_factory=list)  # input unlike the training data
    #: per part of a composite model (cascade stage, ensemble member): that part's own stage timings, keyed by
    #: the part's name (e.g. ``3d_lowres``); empty for a single model. ``timings_ms`` holds the sums.
    parts_ms: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SoftPrediction:
    """Class probabilities on the canonical grid, for ensembling over configurations."""

    probabilities: np.ndarray  # float32 [C, z, y, x], canonical
    class_probabilities: np.ndarray  # [K]
    timings_ms: dict[str, float]


class Timer:
    """Collects wall-clock milliseconds per stage (synchronizing CUDA so GPU work lands in its stage)."""

    def __init__(self, cuda: bool = False) -> None:
        self.ms: dict[str, float] = {}
        self.cuda = cuda
        #: sub-models timed on their own timer (a cascade's previous stage): name -> their stage timings
        self.parts: dict[str, dict[str, float]] = {}

    def add_part(self, name: str, ms: Mapping[str, float]) -> None:
        """Add a sub-model's stage timings to this timer's sums and keep them as part ``name``."""
        for stage, value in ms.items():
            self.ms[stage] = self.ms.get(stage, 0.0) + value
        self.parts[name] = {**ms, "total": sum(ms.values())}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


def volumes_ml(mask: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lesion = int(np.count_nonzero(mask == LABELS["lesion"]))
    return {"pancreas": int(np.count_nonzero(mask)) * voxel_ml, "lesion": lesion * voxel_ml}


def make_prediction(mask: np.ndarray, volume: Volume, class_probabilities: np.ndarray,
                    post: PostprocessConfig | None, timer: Timer) -> Prediction:
    """Post-process a canonical label map and assemble the :class:`Prediction`."""
    with timer("postprocess"):
        if post is not None:
            mask = postprocess(mask, volume.spacing, post)
    probs = [float(p) for p in class_probabilities]
    timings = dict(timer.ms)
    timings["total"] = sum(timings.values())
    return Prediction(mask=mask.astype(np.uint8, copy=False), probabilities=probs, subtype=int(np.argmax(probs)),
                      volumes_ml=volumes_ml(mask, volume.spacing), timings_ms=timings)


def tta_enabled(inference: Mapping[str, Any], config: EngineConfig) -> bool:
    """Mirroring TTA: ``config.tta`` when set, else the bundle's ``metadata.inference["tta"]`` (default off)."""
    return bool(inference.get("tta", False)) if config.tta is None else config.tta


def tta_scales(inference: Mapping[str, Any], config: EngineConfig) -> tuple[float, ...]:
    """Multi-scale TTA: ``config.scales`` when set, else the bundle's ``metadata.inference["scales"]``
    (default ``(1.0,)``: the plans' spacing only); the first factor's pass gives the subtype."""
    return _tta_setting(inference, "scales", config.scales, (1.0,), float, scales_ok,
                        f"need one or more target-spacing factors in (0, {MAX_SCALE:g}], e.g. [1, 1.25]")


def tta_mirror_axes(inference: Mapping[str, Any], config: EngineConfig) -> tuple[int, ...]:
    """The axes mirroring TTA flips: ``config.mirror_axes`` when set, else the bundle's
    ``metadata.inference["mirror_axes"]`` (default all: nnU-Net's 8 passes per 3D patch)."""
    return _tta_setting(inference, "mirror_axes", config.mirror_axes, MIRROR_AXES, lambda a: a, axes_ok,
                        f"need one or more distinct axes of {list(MIRROR_AXES)}, e.g. [2]")


def _tta_setting(inference: Mapping[str, Any], key: str, override: Sequence[Any] | None, default: Sequence[Any],
                 convert: Callable[[Any], Any], ok: Callable[[tuple[Any, ...]], bool], what: str) -> tuple[Any, ...]:
    """``override`` when set, else ``inference[key]`` (``default`` when unset), as a checked tuple."""
    given = override if override is not None else inference.get(key, default)
    try:
        values = tuple(convert(v) for v in given)
    except (TypeError, ValueError):
        values = ()
    if not ok(values):
        raise PancreasError(f"{key} {given!r}: {what}")
    return values


def class_weights(inference: Mapping[str, Any], config: EngineConfig, n_classes: int) -> np.ndarray | None:
    """Per-label factors on the probabilities before the argmax: ``config.class_weights`` when set, else the
    bundle's ``metadata.inference["class_weights"]``; None for a plain argmax (unset or all 1)."""
    given = config.class_weights if config.class_weights is not None else inference.get("class_weights")
    if given is None:
        return None
    try:
        weights = np.asarray(given, dtype=np.float64)
    except (TypeError, ValueError):
        weights = np.zeros(0)
    if weights.shape != (n_classes,) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise PancreasError(f"class_weights {given!r}: need {n_classes} positive factors, one per label "
                            f"({', '.join(LABELS)})")
    return None if np.all(weights == 1) else weights


def weighted_labels(logits: torch.Tensor, weights: np.ndarray | None) -> torch.Tensor:
    """Argmax of ``weights`` x softmax(``logits``) (``[C, ...]``), i.e. of ``logits + log(weights)``; uint8."""
    if weights is None:
        return argmax_labels(logits)
    shift = torch.from_numpy(np.log(weights)).to(logits.device, torch.float32).view(-1, *([1] * (logits.ndim - 1)))
    return argmax_labels(logits + shift)


def post_config(inference: Mapping[str, Any], config: EngineConfig, domain: InputDomain | None = None
                ) -> PostprocessConfig | None:
    """The post-processing a bundle's ``metadata.inference`` records, or None when it or ``config`` turns it off.

    With ``domain``, gland pieces (``min_component_fraction``) without a recorded ``max_total_ml`` are capped
    at the top of its plausible pancreas volume: a piece that would make the gland implausibly large is not one.
    """
    if not (config.postprocess and inference.get("postprocess", True) is not False):
        return None
    post = PostprocessConfig.from_metadata(dict(inference))
    if domain is not None and post.min_component_fraction is not None and post.max_total_ml is None:
        post = replace(post, max_total_ml=float(domain.plausible_pancreas_ml()[1]))
    return post


def predict_file(predict: Callable[[Volume], Prediction], image_path: str | Path, mask_path: str | Path) -> Prediction:
    """Read a CT, ``predict`` it, write the mask on exactly the input's grid; timings gain ``read``/``write``."""
    start = time.perf_counter()
    volume = read_volume(image_path)
    read_ms = (time.perf_counter() - start) * 1000.0
    pred = predict(volume)
    start = time.perf_counter()
    volume.write_mask(pred.mask, mask_path)
    stages = {k: v for k, v in pred.timings_ms.items() if k != "total"}
    pred.timings_ms = {"read": read_ms, **stages, "write": (time.perf_counter() - start) * 1000.0}
    pred.timings_ms["total"] = sum(pred.timings_ms.values())
    return pred
