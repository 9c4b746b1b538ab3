"""The inference engine: canonical CT in; mask, subtype probabilities and per-stage timings out.

Pipeline (each stage timed into ``Prediction.timings_ms``)::

    [coarse]       optional: a pass at ``coarse_factor`` x the target spacing finds the pancreas ROI
    preprocess     nnU-Net preprocessing (transpose, crop, normalize, resample; torch, on the GPU if any)
    inference      sliding window over the backend (Gaussian blending, batches, optional mirroring TTA)
    resample_back  logits back to the cropped original grid (torch)
    export         argmax (or softmax), paste into the canonical array, undo the transpose
    postprocess    largest pancreas component, lesions next to the pancreas

The engine is backend-agnostic: it holds one :class:`~pancreas.backends.Backend` (fold ensembles are an
:class:`~pancreas.backends.ensemble.EnsembleBackend`). Orientation is never touched here: volumes come
from :func:`pancreas.nifti.read_volume` and masks go back through ``Volume.to_image``. Each prediction
carries ``warnings`` where the input or the result is unlike the bundle's training data
(:mod:`pancreas.domain`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pancreas import LABELS
from pancreas.backends import Backend, create_backend
from pancreas.bundle import Bundle
from pancreas.domain import InputDomain, InputWarning
from pancreas.engine_config import EngineConfig
from pancreas.grid import check_grid
from pancreas.nifti import Volume, read_volume
from pancreas.postprocess import PostprocessConfig, largest_component, postprocess
from pancreas.preprocess import (
    Box,
    Preprocessed,
    PreprocessPlan,
    argmax_labels,
    logits_to_crop,
    paste_canonical,
    preprocess,
)
from pancreas.sliding_window import WindowConfig, sliding_window

logger = logging.getLogger(__name__)

#: The options used when none are given (frozen, so one shared instance).
DEFAULT_CONFIG = EngineConfig()


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


class Engine:
    """Runs one model bundle (all folds of one configuration) on canonical volumes."""

    def __init__(self, bundle: Bundle, config: EngineConfig, backend: Backend) -> None:
        self.bundle = bundle
        self.config = config
        self.backend = backend
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.plan = PreprocessPlan.from_plans(bundle.plans, bundle.metadata.network.configuration)
        self.device = torch.device(backend.device if backend.device.startswith("cuda") else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.window = WindowConfig(patch_size=tuple(backend.patch_size), step_size=config.step_size,
                                   batch_size=config.batch_size, tta=config.tta, progress=config.progress)
        inference = bundle.metadata.inference
        enabled = config.postprocess and inference.get("postprocess", True) is not False
        self.post = PostprocessConfig.from_metadata(inference) if enabled else None
        self.domain = InputDomain.from_training_data(bundle.metadata.training_data) or InputDomain()

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, config: EngineConfig = DEFAULT_CONFIG) -> Engine:
        """Load a bundle (if given a path) and create its backend from the registry."""
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        return cls(bundle, config, create_backend(bundle, config))

    @property
    def info(self) -> dict[str, Any]:
        meta = self.bundle.metadata
        return {"name": meta.name, "version": meta.version, "backend": self.backend.name,
                "precision": self.backend.precision, "device": self.backend.device,
                "patch_size": list(self.backend.patch_size), "step_size": self.config.step_size,
                "tta": self.config.tta, "folds": len(getattr(self.backend, "members", [self.backend])),
                "configuration": meta.network.configuration, "coarse_to_fine": self.config.coarse_to_fine,
                "postprocess": self.post is not None}

    def warmup(self) -> None:
        """Run the backend once at the batch sizes the sliding window uses (compiles, allocates)."""
        batch = max(1, min(self.config.batch_size, int(self.backend.max_batch)))
        with torch.inference_mode():  # as the sliding window runs: torch.compile guards on inference tensors
            for b in sorted({batch, 1}):
                x = np.zeros((b, 1, *self.backend.patch_size), dtype=np.float32)
                self.backend(torch.from_numpy(x).to(self.device) if getattr(self.backend, "accepts_tensors", False)
                             else x)

    # ---- stages --------------------------------------------------------------------------------------
    def coarse_roi(self, volume: Volume, device: torch.device | None = None,
                   cancel: threading.Event | None = None) -> Box | None:
        """Find the foreground at ``coarse_factor`` x spacing; return the ROI (transposed axes) or None."""
        plan = self.plan.with_spacing_factor(self.config.coarse_factor)
        pre = preprocess(volume.array, volume.spacing, plan, device=device or self.device)
        res = sliding_window(pre.data, self.backend, WindowConfig(
            patch_size=self.window.patch_size, step_size=self.config.step_size, batch_size=self.config.batch_size),
            cancel=cancel)
        fg = (argmax_labels(res.logits) > 0).cpu().numpy()
        if not fg.any():
            logger.info("coarse pass found no foreground; running the full-resolution pass everywhere")
            return None
        if self.post is not None and self.post.largest_component:
            fg = largest_component(fg)  # stray false positives elsewhere in a full CT must not widen the ROI
        return self._roi_box(fg, pre)

    def _roi_box(self, fg: np.ndarray, pre: Preprocessed) -> Box:
        """Coarse foreground -> box on the transposed original grid, dilated and at least one patch."""
        box = []
        for axis in range(3):
            hits = np.flatnonzero(np.any(fg, axis=tuple(a for a in range(3) if a != axis)))
            n_crop = pre.shape_after_crop[axis]
            scale = n_crop / fg.shape[axis]
            lo, hi = math.floor(hits[0] * scale), math.ceil((hits[-1] + 1) * scale)
            ratio = self.plan.target_spacing[axis] / pre.spacing[axis]  # original voxels per target voxel
            patch = self.window.patch_size[axis]
            margin = math.ceil(self.config.roi_margin * patch * ratio)
            lo, hi = lo - margin, hi + margin
            short = math.ceil(patch * ratio) - (hi - lo)
            if short > 0:
                lo, hi = lo - short // 2, hi + short - short // 2
            offset, full = pre.bbox[axis][0], pre.shape_before_crop[axis]
            box.append((max(lo + offset, 0), min(hi + offset, full)))
        return tuple(box)

    def _segment(self, volume: Volume, timer: Timer, cancel: threading.Event | None = None
                 ) -> tuple[torch.Tensor, Preprocessed, np.ndarray]:
        """Logits on the cropped original grid (transposed axes), the preprocessing record, class probs.

        On CUDA out-of-memory the volume is run again with preprocessing and aggregation on the CPU while the
        backend keeps its GPU (nnU-Net's predictor falls back the same way); an OOM there propagates.
        """
        try:
            return self._segment_on(volume, timer, self.device, cancel)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            logger.warning("%s ran out of memory on a %s volume; retrying with preprocessing and aggregation on "
                           "the CPU (the %s backend stays on %s)", self.device, "x".join(map(str, volume.array.shape)),
                           self.backend.name, self.backend.device)
            torch.cuda.empty_cache()
            return self._segment_on(volume, timer, torch.device("cpu"), cancel)

    def _segment_on(self, volume: Volume, timer: Timer, device: torch.device,
                    cancel: threading.Event | None = None) -> tuple[torch.Tensor, Preprocessed, np.ndarray]:
        self.check_input(volume)
        roi = None
        if self.config.coarse_to_fine:
            with timer("coarse"):
                roi = self.coarse_roi(volume, device, cancel)
        with timer("preprocess"):
            pre = preprocess(volume.array, volume.spacing, self.plan, device=device, roi=roi)
        with timer("inference"):
            res = sliding_window(pre.data, self.backend, self.window, cancel=cancel)
        with timer("resample_back"):
            logits = logits_to_crop(res.logits, pre, self.plan)
        return logits, pre, res.class_probabilities

    # ---- public --------------------------------------------------------------------------------------
    def check_input(self, volume: Volume) -> tuple[int, int, int]:
        """Refuse a volume whose grid at the plans' spacing is empty or over ``config.grid_limits``."""
        return check_grid(volume.shape, volume.spacing, self.plan, self.config.grid_limits)

    def predict(self, volume: Volume, *, cancel: threading.Event | None = None) -> Prediction:
        """Segment and classify one canonical volume; stops at the next patch batch once ``cancel`` is set."""
        timer = Timer(cuda=self.device.type == "cuda")
        logits, pre, cls = self._segment(volume, timer, cancel)
        with timer("export"):
            labels = argmax_labels(logits).cpu().numpy()
            mask = paste_canonical(labels, pre, self.plan)
        pred = make_prediction(mask, volume, cls, self.post, timer)
        pred.warnings = self.domain.check(volume, pred.volumes_ml)
        return pred

    def predict_soft(self, volume: Volume) -> SoftPrediction:
        """Softmax probabilities on the canonical grid (background 1 outside the crop/ROI)."""
        timer = Timer(cuda=self.device.type == "cuda")
        logits, pre, cls = self._segment(volume, timer)
        with timer("export"):
            probs = torch.softmax(logits, dim=0).cpu().numpy()
            full = paste_canonical(probs, pre, self.plan, fill=0.0)
            outside = np.ones(pre.shape_before_crop, dtype=bool)
            outside[tuple(slice(a, b) for a, b in pre.bbox)] = False
            full[0][np.transpose(outside, self.plan.transpose_backward)] = 1.0
        return SoftPrediction(probabilities=full, class_probabilities=cls, timings_ms=timer.ms)

    def predict_file(self, image_path: str | Path, mask_path: str | Path) -> Prediction:
        """Read a CT, predict, write the mask on exactly the input's grid; timings include read/write."""
        start = time.perf_counter()
        volume = read_volume(image_path)
        read_ms = (time.perf_counter() - start) * 1000.0
        pred = self.predict(volume)
        start = time.perf_counter()
        volume.write_mask(pred.mask, mask_path)
        stages = {k: v for k, v in pred.timings_ms.items() if k != "total"}
        pred.timings_ms = {"read": read_ms, **stages, "write": (time.perf_counter() - start) * 1000.0}
        pred.timings_ms["total"] = sum(pred.timings_ms.values())
        return pred


def predict_ensemble(engines: list[Engine], volume: Volume) -> Prediction:
    """Average the canonical-space probabilities of several engines (configurations); argmax; postprocess."""
    if len(engines) == 1:
        return engines[0].predict(volume)
    total, cls, timer = None, None, Timer()
    for engine in engines:
        soft = engine.predict_soft(volume)
        total = soft.probabilities if total is None else np.add(total, soft.probabilities, out=total)
        cls = soft.class_probabilities if cls is None else cls + soft.class_probabilities
        for k, v in soft.timings_ms.items():
            timer.ms[k] = timer.ms.get(k, 0.0) + v
    with timer("export"):
        mask = argmax_labels(torch.from_numpy(total)).numpy()
    pred = make_prediction(mask, volume, cls / len(engines), engines[0].post, timer)
    found = (w for engine in engines for w in engine.domain.check(volume, pred.volumes_ml))
    pred.warnings = list(dict.fromkeys(found))  # each bundle's domain; identical warnings once
    return pred
