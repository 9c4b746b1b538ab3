"""The inference engine: canonical CT in; mask, subtype probabilities and per-stage timings out.

Pipeline (each stage timed into ``Prediction.timings_ms``)::

    [previous]     a cascade (``bundle.previous_stage``): the low-res stage runs first as its own Engine (same
                   options); its raw label map is appended to the preprocessed input as one-hot channels
                   (:mod:`pancreas.cascade`); its stage times add to the sums and are in ``Prediction.parts_ms``;
                   with coarse-to-fine, its foreground gives the ROI instead of a coarse pass
    [coarse]       optional: a pass at ``coarse_factor`` x the target spacing finds the pancreas ROI
    preprocess     nnU-Net preprocessing (transpose, crop, normalize, resample; torch, on the GPU if any)
    inference      sliding window over the backend (Gaussian blending, batches, optional mirroring TTA)
    resample_back  logits back to the cropped original grid (torch)
    export         argmax (or softmax), paste into the canonical array, undo the transpose
    postprocess    largest pancreas component, lesions next to the pancreas

With multi-scale TTA (``scales``, e.g. ``(1, 1.25)``) preprocess, inference and resample_back run once per factor
on the target spacing; the passes' probabilities are averaged on the cropped original grid (their stage times add
up) and the first pass gives the subtype.

The engine is backend-agnostic: it holds one :class:`~pancreas.backends.Backend` (fold ensembles are an
:class:`~pancreas.backends.ensemble.EnsembleBackend`; an ensemble bundle over configurations becomes an
:class:`~pancreas.ensemble_engine.EnsembleEngine` in :meth:`Engine.from_bundle`). Orientation is never touched here: volumes come
from :func:`pancreas.nifti.read_volume` and masks go back through ``Volume.to_image``. Each prediction
carries ``warnings`` where the input or the result is unlike the bundle's training data
(:mod:`pancreas.domain`).
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pancreas.backends import Backend, create_backend
from pancreas.bundle import Bundle
from pancreas.cascade import part_timings, segmentation_spec, with_previous_stage
from pancreas.domain import InputDomain
from pancreas.engine_config import EngineConfig
from pancreas.ensemble_engine import EnsembleEngine
from pancreas.grid import check_grid
from pancreas.nifti import Volume
from pancreas.postprocess import gland_pieces
from pancreas.prediction import (
    Prediction,
    SoftPrediction,
    Timer,
    class_weights,
    make_prediction,
    post_config,
    predict_file,
    tta_enabled,
    tta_mirror_axes,
    tta_scales,
    weighted_labels,
)
from pancreas.preprocess import (
    Box,
    Preprocessed,
    PreprocessPlan,
    argmax_labels,
    logits_to_crop,
    paste_canonical,
    preprocess,
)
from pancreas.sliding_window import WindowConfig, sliding_window, window_batch

logger = logging.getLogger(__name__)

#: The options used when none are given (frozen, so one shared instance).
DEFAULT_CONFIG = EngineConfig()


class Engine:
    """Runs one model bundle (all folds of one configuration) on canonical volumes."""

    def __init__(self, bundle: Bundle, config: EngineConfig, backend: Backend, previous: Engine | None = None) -> None:
        self.bundle = bundle
        self.config = config
        self.backend = backend
        #: a cascade's previous stage (``bundle.previous_stage``; default: all its folds), run first; its label map
        #: becomes extra input channels (:mod:`pancreas.cascade`)
        self.previous = previous
        if previous is None and bundle.previous_stage is not None:
            self.previous = Engine(bundle.previous_stage, config, create_backend(bundle.previous_stage, config))
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.plan = PreprocessPlan.from_plans(bundle.plans, bundle.metadata.network.configuration)
        self.device = torch.device(backend.device if backend.device.startswith("cuda") else "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.window = WindowConfig(patch_size=tuple(backend.patch_size), step_size=config.step_size,
                                   batch_size=config.batch_size, tta=tta_enabled(bundle.metadata.inference, config),
                                   mirror_axes=tta_mirror_axes(bundle.metadata.inference, config),
                                   progress=config.progress)
        self.domain = InputDomain.from_bundle(bundle)
        self.post = post_config(bundle.metadata.inference, config, self.domain)
        self.class_weights = class_weights(bundle.metadata.inference, config, bundle.metadata.network.num_seg_classes)
        #: multi-scale TTA: target-spacing factors, one pass each (``(1.0,)``: the plans' grid only)
        self.scales = tta_scales(bundle.metadata.inference, config)
        self.seg_spec = segmentation_spec(bundle.plans, bundle.metadata.network.configuration) \
            if self.previous is not None else None

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, config: EngineConfig = DEFAULT_CONFIG
                    ) -> Engine | EnsembleEngine:
        """Load a bundle (if given a path) and create its backend from the registry; an ensemble bundle
        (``metadata.members``) gives an :class:`~pancreas.ensemble_engine.EnsembleEngine` of its members."""
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        if bundle.is_ensemble:
            members = {name: cls.from_bundle(member, config) for name, member in bundle.members.items()}
            return EnsembleEngine(members, config, bundle)
        return cls(bundle, config, create_backend(bundle, config))

    @property
    def info(self) -> dict[str, Any]:
        meta = self.bundle.metadata
        return {"name": meta.name, "version": meta.version, "backend": self.backend.name,
                "precision": self.backend.precision, "device": self.backend.device,
                "patch_size": list(self.window.patch_size[1:] if self.plan.is_2d else self.window.patch_size),
                "step_size": self.config.step_size,
                "tta": self.window.tta, "mirror_axes": list(self.window.mirror_axes), "scales": list(self.scales),
                "folds": len(getattr(self.backend, "members", [self.backend])),
                "configuration": meta.network.configuration, "coarse_to_fine": self.config.coarse_to_fine,
                "postprocess": self.post is not None}

    def warmup(self) -> None:
        """Run the backend once at the batch sizes the sliding window uses (compiles, allocates)."""
        batch = window_batch(self.config.batch_size, self.window.patch_size, self.backend)
        with torch.inference_mode():  # as the sliding window runs: torch.compile guards on inference tensors
            for b in sorted({batch, 1}):
                x = np.zeros((b, self.bundle.metadata.network.input_channels, *self.backend.patch_size),
                             dtype=np.float32)
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
            # stray false positives elsewhere in a full CT must not widen the ROI (the same pieces as post-processing)
            fg = gland_pieces(fg, pre.target_spacing, self.post)[1]
        return self._roi_box(fg, pre)

    def _roi_box(self, fg: np.ndarray, pre: Preprocessed) -> Box:
        """Coarse foreground -> box on the transposed original grid, dilated and at least one patch."""
        box = []
        for axis in range(3):
            hits = np.flatnonzero(np.any(fg, axis=tuple(a for a in range(3) if a != axis)))
            n_crop = pre.shape_after_crop[axis]
            scale = n_crop / fg.shape[axis]
            lo, hi = math.floor(hits[0] * scale), math.ceil((hits[-1] + 1) * scale)
            ratio = self.plan.spacing_for(pre.spacing)[axis] / pre.spacing[axis]  # original voxels per target voxel
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
        backend keeps its GPU (nnU-Net's predictor falls back the same way); an OOM there propagates. A cascade's
        previous stage runs once, before either attempt.
        """
        self.check_input(volume)
        prior = self._previous_labels(volume, timer, cancel) if self.previous is not None else None
        try:
            return self._segment_on(volume, timer, self.device, cancel, prior)
        except torch.OutOfMemoryError:
            if self.device.type == "cpu":
                raise
            logger.warning("%s ran out of memory on a %s volume; retrying with preprocessing and aggregation on "
                           "the CPU (the %s backend stays on %s)", self.device, "x".join(map(str, volume.array.shape)),
                           self.backend.name, self.backend.device)
            torch.cuda.empty_cache()
            return self._segment_on(volume, timer, torch.device("cpu"), cancel, prior)

    def _segment_on(self, volume: Volume, timer: Timer, device: torch.device, cancel: threading.Event | None = None,
                    prior: np.ndarray | None = None) -> tuple[torch.Tensor, Preprocessed, np.ndarray]:
        roi = None
        if self.config.coarse_to_fine:
            with timer("coarse"):
                roi = self.coarse_roi(volume, device, cancel) if prior is None else self._prior_roi(prior, volume)
        passes, first = [], None
        for factor in self.scales:
            plan = self._plan_at(factor)
            with timer("preprocess"):
                pre = preprocess(volume.array, volume.spacing, plan, device=device, roi=roi)
                if prior is not None:
                    pre = with_previous_stage(pre, prior, plan, self.seg_spec)
            with timer("inference"):
                res = sliding_window(pre.data, self.backend, self.window, cancel=cancel)
            with timer("resample_back"):
                passes.append((logits_to_crop(res.logits, pre, plan), res.class_probabilities))
            if first is None:  # every pass crops the same box of the original grid
                first = pre
        if len(passes) == 1:
            return passes[0][0], first, passes[0][1]
        with timer("resample_back"):
            return mean_log_probabilities([logits for logits, _ in passes]), first, passes[0][1]

    def _previous_labels(self, volume: Volume, timer: Timer, cancel: threading.Event | None) -> np.ndarray:
        """The previous cascade stage's raw label map (canonical); its timings become a part of ``timer``."""
        own = Timer(cuda=timer.cuda)
        labels, _ = self.previous.labels(volume, own, cancel)  # its subtype is not used (see pancreas.cascade)
        timer.add_part(self.previous.bundle.metadata.network.configuration, own.ms)
        return labels

    def _prior_roi(self, labels: np.ndarray, volume: Volume) -> Box | None:
        """coarse-to-fine of a cascade: the ROI around the previous stage's foreground (no extra coarse pass)."""
        fg = np.transpose(labels > 0, self.plan.transpose_forward)
        if not fg.any():
            return None
        spacing = tuple(float(volume.spacing[i]) for i in self.plan.transpose_forward)
        if self.post is not None and self.post.largest_component:
            fg = gland_pieces(fg, spacing, self.post)[1]
        whole = Preprocessed(data=torch.empty(0), bbox=tuple((0, n) for n in fg.shape), shape_before_crop=fg.shape,
                             spacing=spacing, target_spacing=self.plan.target_spacing)
        return self._roi_box(fg, whole)

    # ---- public --------------------------------------------------------------------------------------
    def labels(self, volume: Volume, timer: Timer, cancel: threading.Event | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The canonical label map (not post-processed) and the subtype probabilities, timed into ``timer``."""
        logits, pre, cls = self._segment(volume, timer, cancel)
        with timer("export"):
            mask = paste_canonical(weighted_labels(logits, self.class_weights).cpu().numpy(), pre, self.plan)
        return mask, cls

    def check_input(self, volume: Volume) -> tuple[int, int, int]:
        """Refuse a volume whose grid at the plans' spacing (at every factor of ``scales``) is empty or over
        ``config.grid_limits``; the first factor's grid."""
        grids = [check_grid(volume.shape, volume.spacing, self._plan_at(f), self.config.grid_limits)
                 for f in self.scales]
        return grids[0]

    def _plan_at(self, factor: float) -> PreprocessPlan:
        """The preprocessing plan at ``factor`` x the target spacing (multi-scale TTA)."""
        return self.plan if factor == 1 else self.plan.with_spacing_factor(factor)

    def predict(self, volume: Volume, *, cancel: threading.Event | None = None) -> Prediction:
        """Segment and classify one canonical volume; stops at the next patch batch once ``cancel`` is set."""
        timer = Timer(cuda=self.device.type == "cuda")
        mask, cls = self.labels(volume, timer, cancel)
        pred = make_prediction(mask, volume, cls, self.post, timer)
        pred.warnings = self.domain.check(volume, pred.volumes_ml)
        if timer.parts:  # a cascade: each stage's own timings
            previous = {k: v for part in timer.parts.values() for k, v in part.items() if k != "total"}
            pred.parts_ms = {**timer.parts,
                             self.bundle.metadata.network.configuration: part_timings(pred.timings_ms, previous)}
        return pred

    def predict_soft(self, volume: Volume, *, cancel: threading.Event | None = None) -> SoftPrediction:
        """Softmax probabilities on the canonical grid (background 1 outside the crop/ROI)."""
        timer = Timer(cuda=self.device.type == "cuda")
        logits, pre, cls = self._segment(volume, timer, cancel)
        with timer("export"):
            probs = torch.softmax(logits, dim=0).cpu().numpy()
            full = paste_canonical(probs, pre, self.plan, fill=0.0)
            outside = np.ones(pre.shape_before_crop, dtype=bool)
            outside[tuple(slice(a, b) for a, b in pre.bbox)] = False
            full[0][np.transpose(outside, self.plan.transpose_backward)] = 1.0
        return SoftPrediction(probabilities=full, class_probabilities=cls, timings_ms=timer.ms)

    def predict_file(self, image_path: str | Path, mask_path: str | Path) -> Prediction:
        """Read a CT, predict, write the mask on exactly the input's grid; timings include read/write."""
        return predict_file(self.predict, image_path, mask_path)


def mean_log_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """``log(mean(softmax(l)))`` over same-shaped logits ``[C, ...]``: the passes' averaged probabilities, in
    the logit form the argmax (with class weights) and ``predict_soft``'s softmax take."""
    total = torch.softmax(logits[0], dim=0)
    for more in logits[1:]:
        total += torch.softmax(more, dim=0)
    return torch.log(total.div_(len(logits)).clamp_min_(1e-12))
