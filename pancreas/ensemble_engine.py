"""Ensembles over configurations (e.g. 3d_fullres + 2d): several engines behind the one engine surface.

An :class:`EnsembleEngine` runs every member engine on the same canonical volume, averages the members'
canonical class probabilities (mask) and subtype probabilities, takes the argmax and post-processes once
(as ``nnUNetv2_ensemble`` averages saved probabilities, here in memory). ``Prediction.timings_ms`` holds
the stage sums over the members plus the ensemble's own argmax (``export``) and ``postprocess``;
``Prediction.parts_ms`` each member's own stage timings, keyed by member name. Each member's domain
warnings are reported once.

Not to be confused with the *fold* ensemble inside one configuration
(:class:`pancreas.backends.ensemble.EnsembleBackend`, averaged per patch batch).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pancreas.bundle import Bundle
from pancreas.domain import InputDomain, InputWarning
from pancreas.engine_config import EngineConfig
from pancreas.errors import BundleError, JobCancelled
from pancreas.nifti import Volume
from pancreas.postprocess import PostprocessConfig
from pancreas.prediction import (
    Prediction,
    SoftPrediction,
    Timer,
    class_weights,
    make_prediction,
    post_config,
    predict_file,
)
from pancreas.preprocess import argmax_labels

logger = logging.getLogger(__name__)


class MemberEngine(Protocol):
    """What an ensemble needs of a member: an :class:`~pancreas.engine.Engine` (or an ensemble) has it."""

    bundle: Bundle | None
    config: EngineConfig
    post: PostprocessConfig | None
    class_weights: np.ndarray | None
    domain: InputDomain

    @property
    def info(self) -> dict[str, Any]: ...

    def warmup(self) -> None: ...

    def check_input(self, volume: Volume) -> tuple[int, ...]: ...

    def predict_soft(self, volume: Volume, *, cancel: threading.Event | None = None) -> SoftPrediction: ...


def average(parts: Sequence[SoftPrediction]) -> tuple[np.ndarray, np.ndarray]:
    """Mean canonical probabilities ``[C, z, y, x]`` and mean subtype probabilities ``[K]`` of ``parts``."""
    if not parts:
        raise ValueError("nothing to average: no member predictions")
    total = np.array(parts[0].probabilities, dtype=np.float32, copy=True)
    for part in parts[1:]:
        if part.probabilities.shape != total.shape:
            raise ValueError(f"member probabilities of shapes {total.shape} and {part.probabilities.shape} cannot "
                             "be averaged; members must predict on the same canonical grid")
        total += part.probabilities
    total /= len(parts)
    cls = np.mean([np.asarray(p.class_probabilities, dtype=np.float64) for p in parts], axis=0)
    return total, cls


def _stages(timings: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in timings.items() if k != "total"}


def combine(parts: Mapping[str, SoftPrediction], volume: Volume, post: PostprocessConfig | None,
            domains: Sequence[InputDomain] = (), weights: np.ndarray | None = None) -> Prediction:
    """Average ``parts`` (member name -> soft prediction), argmax (of ``weights`` x probabilities when given),
    post-process once; warnings of ``domains``.

    ``timings_ms``: the members' stage sums plus this step's ``export`` and ``postprocess``; ``parts_ms``:
    each member's own stage timings (with its ``total``).
    """
    timer = Timer()
    for part in parts.values():
        for stage, ms in _stages(part.timings_ms).items():
            timer.ms[stage] = timer.ms.get(stage, 0.0) + ms
    with timer("export"):
        probabilities, cls = average(list(parts.values()))
        scores = probabilities if weights is None else \
            probabilities * weights.astype(np.float32).reshape(-1, *([1] * (probabilities.ndim - 1)))
        mask = argmax_labels(torch.from_numpy(scores)).numpy()
    pred = make_prediction(mask, volume, cls, post, timer)
    pred.parts_ms = {name: {**_stages(p.timings_ms), "total": sum(_stages(p.timings_ms).values())}
                     for name, p in parts.items()}
    found: list[InputWarning] = [w for domain in domains for w in domain.check(volume, pred.volumes_ml)]
    pred.warnings = list(dict.fromkeys(found))  # identical warnings of several members once
    return pred


class EnsembleEngine:
    """Runs an ensemble over configurations: member engines, averaged on the canonical grid.

    Build one with :meth:`pancreas.engine.Engine.from_bundle` on an ensemble bundle (``metadata.members``),
    or with :func:`ensemble_of` from engines already built (``pancreas predict -m A -m B``; ``bundle`` is
    then None). Post-processing and class weights follow the ensemble bundle's ``metadata.inference`` (an
    ad-hoc ensemble: its first member's); ``domain`` is its first member's.
    """

    def __init__(self, members: Mapping[str, MemberEngine], config: EngineConfig, bundle: Bundle | None = None
                 ) -> None:
        if len(members) < 2:
            raise BundleError(f"an ensemble needs at least two members, got {list(members)}", code="bundle_corrupt")
        self.members = dict(members)
        self.config = config
        self.bundle = bundle
        first = next(iter(self.members.values()))
        self.post = first.post if bundle is None else post_config(bundle.metadata.inference, config, first.domain)
        self.class_weights = first.class_weights if bundle is None else class_weights(
            bundle.metadata.inference, config, bundle.metadata.network.num_seg_classes)
        self.domain = first.domain

    @property
    def name(self) -> str:
        return self.bundle.metadata.name if self.bundle is not None else "+".join(self.members)

    @property
    def info(self) -> dict[str, Any]:
        members = {name: m.info for name, m in self.members.items()}

        def joined(key: str) -> str:
            return "+".join(dict.fromkeys(str(i.get(key, "")) for i in members.values()))

        return {"name": self.name, "version": self.bundle.metadata.version if self.bundle is not None else "",
                "backend": joined("backend"), "precision": joined("precision"), "device": joined("device"),
                "patch_size": None, "step_size": self.config.step_size,
                "tta": any(bool(i.get("tta")) for i in members.values()),
                "folds": sum(int(i.get("folds", 1)) for i in members.values()),
                "configuration": "ensemble(" + "+".join(str(i.get("configuration")) for i in members.values()) + ")",
                "coarse_to_fine": self.config.coarse_to_fine, "postprocess": self.post is not None,
                "members": members}

    def warmup(self) -> None:
        for member in self.members.values():
            member.warmup()

    def check_input(self, volume: Volume) -> tuple[int, ...]:
        """Every member's grid check; the largest member grid (voxels) is returned."""
        grids = [member.check_input(volume) for member in self.members.values()]
        return max(grids, key=lambda g: int(np.prod(g)))

    def _parts(self, volume: Volume, cancel: threading.Event | None) -> dict[str, SoftPrediction]:
        parts = {}
        for name, member in self.members.items():
            if cancel is not None and cancel.is_set():
                raise JobCancelled(f"cancelled before ensemble member {name!r}")
            parts[name] = member.predict_soft(volume, cancel=cancel)
        return parts

    def predict(self, volume: Volume, *, cancel: threading.Event | None = None) -> Prediction:
        """Segment and classify one canonical volume with every member; see :func:`combine`."""
        domains = [member.domain for member in self.members.values()]
        return combine(self._parts(volume, cancel), volume, self.post, domains, self.class_weights)

    def predict_soft(self, volume: Volume, *, cancel: threading.Event | None = None) -> SoftPrediction:
        """The members' averaged probabilities (an ensemble can itself be a member); timings are the sums."""
        parts = self._parts(volume, cancel)
        probabilities, cls = average(list(parts.values()))
        timings: dict[str, float] = {}
        for part in parts.values():
            for stage, ms in _stages(part.timings_ms).items():
                timings[stage] = timings.get(stage, 0.0) + ms
        return SoftPrediction(probabilities=probabilities, class_probabilities=cls, timings_ms=timings)

    def predict_file(self, image_path: str | Path, mask_path: str | Path) -> Prediction:
        """Read a CT, predict, write the mask on exactly the input's grid; timings include read/write."""
        return predict_file(self.predict, image_path, mask_path)


def ensemble_of(engines: Sequence[MemberEngine], config: EngineConfig | None = None) -> Any:
    """One engine for ``engines``: the engine itself when there is one, else an ad-hoc :class:`EnsembleEngine`
    whose members are named after their bundle folders (``-2``, ``-3`` ... on clashes)."""
    if len(engines) == 1:
        return engines[0]
    names: dict[str, MemberEngine] = {}
    for engine in engines:
        base = engine.bundle.root.name if engine.bundle is not None else "member"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names[name] = engine
    return EnsembleEngine(names, config or engines[0].config)
