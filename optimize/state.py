"""The types every recipe stage shares: :class:`Recipe`, :class:`RecipeError` and the working :class:`State`.

:mod:`optimize.recipes` parses and chains recipes; :mod:`optimize.stages` holds the stage functions
(``fn(state, recipe)``, :data:`RecipeFn`). Both import these types from here.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optimize.data import PatchSet, phantom_patches
from optimize.options import OptimizeOptions
from optimize.runners import Runner, time_runner
from optimize.validate import ParityReport, patch_accuracy
from pancreas.bundle import Artifact, Bundle, provenance
from pancreas.errors import PancreasError
from pancreas.network import load_network
from pancreas.phantoms import SynthConfig, synthesize

logger = logging.getLogger(__name__)

__all__ = ["Recipe", "RecipeError", "RecipeFn", "State"]


class RecipeError(PancreasError):
    code = "invalid_recipe"


@dataclass(frozen=True)
class Recipe:
    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name


class State:
    """The working state threaded through the recipes."""

    def __init__(self, bundle: Bundle, out: Path, options: OptimizeOptions) -> None:
        self.bundle, self.out, self.options = bundle, out, options
        torch_arts = [a for a in bundle.artifacts("torch", "fp32") if options.fold is None or a.fold == options.fold]
        if not torch_arts:
            raise RecipeError(f"bundle {bundle.root} has no fp32 torch artifact"
                              f"{'' if options.fold is None else f' for fold {options.fold}'} to optimize")
        self.source = torch_arts[0]
        state = torch.load(bundle.path(self.source), map_location="cpu", weights_only=True)
        self.teacher = load_network(bundle.plans, bundle.metadata.network, state)
        self.net, self.config = self.teacher, bundle.metadata.network
        self.patch = [int(p) for p in (self.source.patch_size or bundle.configuration["patch_size"])]
        self.onnx: dict[str, Path] = {}
        self.artifacts: list[Artifact] = []
        self.records: list[dict[str, Any]] = []
        self._patches: dict[str, PatchSet] = {}
        self._accuracy: dict[int, dict[str, float]] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # ---- data ------------------------------------------------------------------------------------------
    def data_root(self) -> Path:
        if self.options.data is not None:
            return Path(self.options.data)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pancreas-optimize-")
            logger.info("no --data given: synthesizing phantoms in %s", self._tmp.name)
            synthesize(Path(self._tmp.name), SynthConfig(cases_per_subtype=max(2, self.options.train_cases // 3),
                                                         splits=("train", "validation"), seed=self.options.seed))
        return Path(self._tmp.name)

    @property
    def torch_weights(self) -> str:
        """Where the optimized bundle keeps the current torch weights (``models/fold_<k>.pt``)."""
        return f"models/fold_{self.source.fold if self.source.fold is not None else 0}.pt"

    def patches(self, purpose: str) -> PatchSet:
        """``calib`` / ``train`` (training split) or ``val`` (validation split) patches, cached."""
        o = self.options
        sizes = {"calib": ("train", o.calib_cases, o.calib_per_case, 1), "train": ("train", o.train_cases,
                 o.train_per_case, 2), "val": ("validation", o.val_cases, o.val_per_case, 3)}
        if purpose not in self._patches:
            split, cases, per_case, salt = sizes[purpose]
            bias = {"fg_fraction": o.train_fg_fraction, "lesion_fraction": o.train_lesion_fraction} \
                if purpose == "train" else {}
            self._patches[purpose] = phantom_patches(self.bundle, self.data_root(), split=split, max_cases=cases,
                                                     per_case=per_case, seed=o.seed + salt, **bias)
        return self._patches[purpose]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def accuracy(self, runner: Runner) -> dict[str, float]:
        key = id(runner)
        if key not in self._accuracy:
            val = self.patches("val")
            self._accuracy[key] = patch_accuracy(runner, val.images, val.labels, val.subtypes)
        return self._accuracy[key]

    def add(self, artifact: Artifact) -> None:
        self.artifacts = [a for a in self.artifacts if a.path != artifact.path] + [artifact]

    def record(self, recipe: Recipe, precision: str, artifact: str | None, *, reference: Runner,
               candidate: Runner, reference_name: str, seconds: float, parity: ParityReport | None = None,
               **details: Any) -> dict[str, Any]:
        """Measure accuracy and latency of ``candidate`` against ``reference`` and append the record."""
        x = self.patches("val").images[:1]
        before, after = self.accuracy(reference), self.accuracy(candidate)
        lat0, lat1 = time_runner(reference, x), time_runner(candidate, x)
        rec = {"recipe": str(recipe), "precision": precision, "artifact": artifact, "reference": reference_name,
               "parity": parity.to_dict() if parity is not None else None,
               "accuracy": {"before": before, "after": after,
                            "delta": {k: round(after[k] - before[k], 5) for k in before},
                            "scope": f"{len(self.patches('val'))} held-out phantom patches"},
               "latency_ms_per_patch": {"before": round(lat0, 2), "after": round(lat1, 2),
                                        "speedup": round(lat0 / lat1, 3) if lat1 else None, "device": "cpu"},
               "seconds": round(seconds, 1), "versions": provenance("").versions, **details}
        self.records.append(rec)
        logger.info("%s: %s, accuracy delta %s, latency %.0f -> %.0f ms", recipe, precision, rec["accuracy"]["delta"],
                    lat0, lat1)
        return rec


#: a stage: transforms the state and appends its record (see :mod:`optimize.stages`)
RecipeFn = Callable[[State, Recipe], None]
