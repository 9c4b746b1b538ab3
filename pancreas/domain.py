"""Input domain: the inputs a model was trained on, and warnings for inputs unlike them.

A bundle records the ranges seen in training in ``metadata.training_data["domain"]``::

    {"axes": "zyx",
     "spacing_mm": {"min": [z, y, x], "max": [z, y, x]},   # voxel spacing per axis
     "extent_mm": {"min": [z, y, x], "max": [z, y, x]},    # field of view (shape * spacing) per axis
     "pancreas_ml": {"min": a, "max": b},                  # pancreas incl. lesion (labels 1, 2) in masks
     "n_cases": n, "tolerance": {...}}

Per-axis values are in the canonical numpy order of :attr:`pancreas.nifti.Volume.spacing`: ``z`` (world
inferior-superior), ``y`` (anterior-posterior), ``x`` (right-left), whatever the file's own axis order.
:meth:`InputDomain.check_input` and :meth:`InputDomain.check_prediction` return :class:`InputWarning`
objects; a prediction is still made, the warnings say why it may be wrong. The codes are defined once,
in :data:`WARNING_CODES`; the margins once, in :class:`Tolerance`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pancreas.bundle import Bundle
from pancreas.errors import BundleError, DatasetError
from pancreas.evaluation import label_array
from pancreas.lesion_size import found_below
from pancreas.nifti import Volume, orientation_of, read_image, read_volume

logger = logging.getLogger(__name__)

AXES = ("z", "y", "x")

#: Warning code -> what it means. The one place that defines the codes (the service documents these).
WARNING_CODES: dict[str, str] = {
    "fov": "the field of view is far larger than the training images on some axis",
    "spacing": "the voxel spacing is outside the range seen in training on some axis",
    "pancreas_volume": "the predicted pancreas volume is outside the plausible range",
    "empty_pancreas": "no pancreas was predicted",
    "small_lesion": "no lesion, or only a small one, was predicted: small lesions are the ones the model misses",
}

#: Metrics keys whose lesion-by-size bins (:mod:`pancreas.lesion_size`) back the ``small_lesion`` warning, best
#: first, with the data they were measured on.
LESION_SENSITIVITY_KEYS = (("real_recipe_cv_lesion_by_size", "its recipe's fold models, out of fold on real CT"),
                           ("real_oof_lesion_by_size", "its fold models, out of fold on real CT"))

#: Plausible predicted pancreas volume (labels 1 and 2, mL) when a bundle records no range. The real quiz
#: masks measure 28-682 mL incl. lesion (adult pancreas alone is typically 50-100 mL; the top of the range
#: is a very large cyst). Below 20 mL the gland is probably partly missed or cut by the field of view;
#: above 700 mL the mask has almost certainly leaked into neighbouring organs.
DEFAULT_PANCREAS_ML = (20.0, 700.0)


@dataclass(frozen=True)
class InputWarning:
    """One warning about an input or a prediction: a stable ``code`` (see WARNING_CODES) and a message."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in WARNING_CODES:
            raise ValueError(f"unknown warning code {self.code!r}; known: {sorted(WARNING_CODES)}")

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class _Frozen(BaseModel):
    # unknown keys are ignored so that bundles written by a newer exporter still load
    model_config = ConfigDict(frozen=True, extra="ignore")


Triple = tuple[float, float, float]


class AxisRange(_Frozen):
    """Per-axis (z, y, x) minimum and maximum, mm."""

    min: Triple | None = None
    max: Triple | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AxisRange:
        for bound in (self.min, self.max):
            if bound is not None and not all(np.isfinite(v) and v > 0 for v in bound):
                raise ValueError(f"values {list(bound)} must be finite and positive")
        if self.min is not None and self.max is not None and any(a > b for a, b in zip(self.min, self.max)):
            raise ValueError(f"min {list(self.min)} exceeds max {list(self.max)}")
        return self


class VolumeRange(_Frozen):
    """A range of volumes, mL."""

    min: float = Field(ge=0)
    max: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> VolumeRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} exceeds max {self.max}")
        return self


class Tolerance(_Frozen):
    """How far outside the training ranges an input may be before a warning.

    ``fov_factor``: warn when the field of view exceeds ``fov_factor`` x the largest training extent on any
    axis (1.5: a crop drawn a bit more generously is fine, a whole abdomen is not). ``spacing``: relative
    margin around the trained spacing range (0.25: 3 mm slices trained means up to 3.75 mm passes).
    ``pancreas_ml``: relative margin around the recorded pancreas-volume range (not applied to
    :data:`DEFAULT_PANCREAS_ML`, which already is a generous range). ``small_lesion_ml``: warn when the
    predicted lesion is smaller (0 included) than this; 0 turns the warning off. 3 mL: out of fold the demo
    recipe found 45 of 47 real lesions of 3 mL and more and 2 of 13 under it
    (``benchmarks/results/real-quiz.md``).
    """

    fov_factor: float = Field(default=1.5, ge=1.0)
    spacing: float = Field(default=0.25, ge=0.0)
    pancreas_ml: float = Field(default=0.25, ge=0.0, lt=1.0)
    small_lesion_ml: float = Field(default=3.0, ge=0.0)


class LesionSensitivity(_Frozen):
    """How many real lesions under ``below_ml`` the model (or its recipe) found when they were held out;
    ``data`` says who found them, on what."""

    below_ml: float = Field(gt=0)
    found: int = Field(ge=0)
    n: int = Field(gt=0)
    data: str


class InputDomain(_Frozen):
    """The training ranges of one model. Every range is optional; an empty domain checks only the pancreas
    volume, against :data:`DEFAULT_PANCREAS_ML`."""

    axes: Literal["zyx"] = "zyx"
    spacing_mm: AxisRange | None = None
    extent_mm: AxisRange | None = None
    pancreas_ml: VolumeRange | None = None
    n_cases: int | None = None
    tolerance: Tolerance = Field(default_factory=Tolerance)
    lesion_sensitivity: LesionSensitivity | None = None

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> InputDomain:
        """A bundle's domain (an empty one when it records none), with the small-lesion sensitivity its
        metrics record (:data:`LESION_SENSITIVITY_KEYS`)."""
        domain = cls.from_training_data(bundle.metadata.training_data) or cls()
        limit = domain.tolerance.small_lesion_ml
        for key, data in LESION_SENSITIVITY_KEYS:
            counts = found_below(bundle.metadata.metrics.get(key) or [], limit) if limit > 0 else None
            if counts is not None:
                sensitivity = LesionSensitivity(below_ml=limit, found=counts[0], n=counts[1], data=data)
                return domain.model_copy(update={"lesion_sensitivity": sensitivity})
        return domain

    @classmethod
    def from_training_data(cls, training_data: Mapping[str, Any]) -> InputDomain | None:
        """The domain recorded in ``metadata.training_data["domain"]``; None when there is none."""
        raw = training_data.get("domain")
        if raw is None:
            return None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "domain"
            raise BundleError(f"training_data.domain in the bundle metadata is malformed at {where} "
                              f"({first['msg']}); re-export the bundle", code="bundle_corrupt") from exc

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    # ---- checks --------------------------------------------------------------------------------------
    def check(self, volume: Volume, volumes_ml: Mapping[str, float]) -> list[InputWarning]:
        """:meth:`check_input` then :meth:`check_prediction`."""
        return self.check_input(volume) + self.check_prediction(volumes_ml)

    def check_input(self, volume: Volume) -> list[InputWarning]:
        """Warnings about the CT itself: field of view and voxel spacing against the training ranges."""
        spacing = tuple(float(s) for s in volume.spacing)
        extent = tuple(n * s for n, s in zip(volume.shape, spacing))
        warnings = []
        if self.extent_mm is not None and self.extent_mm.max is not None:
            limit = self.extent_mm.max
            if any(e > self.tolerance.fov_factor * m for e, m in zip(extent, limit)):
                warnings.append(InputWarning("fov", (
                    f"field of view {_mm(extent, 0)} mm (z,y,x) exceeds the training crops (at most "
                    f"{_mm(limit, 0)} mm): the model was trained on pancreas crops; crop the CT around the "
                    "pancreas or expect false positives")))
        lo, hi = (self.spacing_mm.min, self.spacing_mm.max) if self.spacing_mm is not None else (None, None)
        if lo is not None and hi is not None:
            tol = self.tolerance.spacing
            bad = [AXES[i] for i, s in enumerate(spacing) if s < lo[i] * (1 - tol) or s > hi[i] * (1 + tol)]
            if bad:
                trained = ", ".join(f"{a} {lo[i]:.2f}-{hi[i]:.2f}" for i, a in enumerate(AXES))
                warnings.append(InputWarning("spacing", (
                    f"voxel spacing {_mm(spacing, 2)} mm (z,y,x) is outside the training range on axis "
                    f"{'/'.join(bad)} (trained {trained} mm, +-{tol:.0%}): accuracy may be lower; "
                    "resample the CT into that range if you can")))
        return warnings

    def plausible_pancreas_ml(self) -> tuple[float, float]:
        """The plausible predicted pancreas volume (mL): the training masks' range widened by the tolerance, else
        :data:`DEFAULT_PANCREAS_ML`."""
        if self.pancreas_ml is None:
            return DEFAULT_PANCREAS_ML
        tol = self.tolerance.pancreas_ml
        return self.pancreas_ml.min * (1 - tol), self.pancreas_ml.max * (1 + tol)

    def check_prediction(self, volumes_ml: Mapping[str, float]) -> list[InputWarning]:
        """Warnings about the result: no pancreas, a pancreas volume outside the plausible range, no lesion or
        a small one."""
        ml = float(volumes_ml.get("pancreas", 0.0))
        if ml <= 0:
            return [InputWarning("empty_pancreas", (
                "no pancreas was found (predicted pancreas volume 0 mL): check that the CT covers the "
                "pancreas and holds Hounsfield units"))]
        return self._check_pancreas_ml(ml) + self._check_lesion_ml(float(volumes_ml.get("lesion", 0.0)))

    def _check_pancreas_ml(self, ml: float) -> list[InputWarning]:
        lo, hi = self.plausible_pancreas_ml()
        source = (f"training masks {self.pancreas_ml.min:.0f}-{self.pancreas_ml.max:.0f} mL, "
                  f"+-{self.tolerance.pancreas_ml:.0%}") if self.pancreas_ml is not None else "anatomical default"
        if lo <= ml <= hi:
            return []
        why = ("the pancreas may be partly missed or cut off by the field of view" if ml < lo
               else "the mask may have leaked into neighbouring organs")
        return [InputWarning("pancreas_volume", (
            f"predicted pancreas volume {ml:.1f} mL is outside the plausible range {lo:.0f}-{hi:.0f} mL "
            f"({source}): {why}; check the mask"))]

    def _check_lesion_ml(self, ml: float) -> list[InputWarning]:
        limit = self.tolerance.small_lesion_ml
        if ml >= limit:
            return []
        seen = self.lesion_sensitivity
        evidence = (f"{seen.data}, found {seen.found} of {seen.n} lesions under {seen.below_ml:g} mL"
                    if seen is not None else "small lesions are the ones such models miss")
        what = "no lesion was predicted" if ml <= 0 else f"the predicted lesion is {ml:.2f} mL"
        return [InputWarning("small_lesion", (
            f"{what}, under {limit:g} mL, where this model is unreliable: {evidence}; a small lesion may be "
            "missed or mis-sized, and the subtype rests on little lesion evidence"))]


def _mm(values: Sequence[float], digits: int) -> str:
    return "x".join(f"{v:.{digits}f}" for v in values)


# ---- measuring ---------------------------------------------------------------------------------------
def measure(images: Sequence[Volume | str | Path], masks: Sequence[Volume | str | Path] = (), *,
            tolerance: Tolerance | None = None) -> InputDomain:
    """The domain of a training set: spacing and extent ranges of ``images``, pancreas volumes of ``masks``.

    Image paths are read header-only. Masks are rounded to labels (``pancreas.evaluation.label_array``);
    the pancreas volume counts labels 1 and 2. ``tolerance`` is recorded with the domain (default
    :class:`Tolerance`). Raises DatasetError for an empty list or an unreadable file.
    """
    if not images:
        raise DatasetError("measure() needs at least one training image")
    grids = np.array([_canonical_grid(image) for image in images])  # [case, (shape, spacing), axis]
    spacing, extent = grids[:, 1], grids[:, 0] * grids[:, 1]
    pancreas = [_pancreas_ml(mask) for mask in masks]
    return InputDomain(
        spacing_mm=AxisRange(min=tuple(spacing.min(0)), max=tuple(spacing.max(0))),
        extent_mm=AxisRange(min=tuple(extent.min(0)), max=tuple(extent.max(0))),
        pancreas_ml=VolumeRange(min=min(pancreas), max=max(pancreas)) if pancreas else None,
        n_cases=len(images), tolerance=tolerance or Tolerance())


def _canonical_grid(image: Volume | str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(shape, spacing) in canonical (z, y, x) order, from the header only where ``image`` is a path."""
    if isinstance(image, Volume):
        return tuple(float(n) for n in image.shape), tuple(image.spacing)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DatasetError(f"{image}: not a readable NIfTI/ITK image", code="unreadable") from exc
    if reader.GetDimension() != 3:  # e.g. 4D with one channel: let the full reader handle it
        return _canonical_grid(read_volume(image, name=str(image)))
    transpose = orientation_of(reader.GetDirection()).transpose
    size_zyx, spacing_zyx = reader.GetSize()[::-1], reader.GetSpacing()[::-1]
    return (tuple(float(size_zyx[i]) for i in transpose), tuple(float(spacing_zyx[i]) for i in transpose))


def _pancreas_ml(mask: Volume | str | Path) -> float:
    if isinstance(mask, Volume):
        array, spacing, name = mask.array, mask.spacing, "mask"
    else:
        image = read_image(mask, name=str(mask))
        array, spacing, name = sitk.GetArrayViewFromImage(image), image.GetSpacing(), str(mask)
    labels = label_array(array, name)
    return int(np.count_nonzero(labels)) * float(np.prod(spacing)) / 1000.0


def record_domain(bundle_root: str | Path, domain: InputDomain) -> Bundle:
    """Store ``domain`` in a bundle's ``training_data["domain"]`` (checksums re-verified, re-validated)."""
    bundle = Bundle.load(bundle_root)
    meta = bundle.metadata.model_copy(deep=True)
    meta.training_data["domain"] = domain.to_json()
    logger.info("recorded the input domain of %s cases in %s", domain.n_cases, bundle.root)
    return Bundle.write(bundle.root, meta, bundle.plans, bundle.dataset)
