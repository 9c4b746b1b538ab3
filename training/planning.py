"""nnU-Net fingerprinting, planning and preprocessing, plus a ``--tiny`` planner for CPU work and CI.

:func:`plan_and_preprocess` runs nnU-Net's own steps (``DatasetFingerprintExtractor``, an
``ExperimentPlanner``, ``DefaultPreprocessor``) for the requested configurations. The classes are used
directly, not looked up by name (nnU-Net's name lookup imports modules that need torchvision).

The tiny planners subclass nnU-Net's planners and override hooks only:

* ``get_plans_for_configuration``: plans on a median shape capped to ``TinyOptions.max_patch_voxels``
  (so the patch is small), then keeps at most ``max_stages`` resolution stages and sets the batch size;
* ``determine_fullres_target_spacing``: multiplies nnU-Net's target spacing by ``spacing_factor``;
* ``__init__``: base/max feature widths and decoder depth;
* ``plan_experiment``: with ``TinyOptions.lowres_factor`` set, adds a ``3d_lowres`` configuration at that
  factor x the ``3d_fullres`` spacing and the ``3d_cascade_fullres`` configuration, linked by
  ``next_stage`` / ``previous_stage`` as nnU-Net links them (nnU-Net plans low-res only when the full-res
  patch covers a small share of the median image, which the tiny patch caps never let happen).

Preprocessing runs once per data identifier: ``3d_cascade_fullres`` inherits ``3d_fullres``'s, so asking
for it preprocesses the ``3d_fullres`` data (the cascade reads it plus the low-res stage's predictions).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    ResEncUNetPlanner,
    nnUNetPlannerResEncM,
)
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

from pancreas.errors import DatasetError
from training.nnunet_env import current, resolve_dataset
from training.subtypes import SPLITS_FILE, SUBTYPES_FILE

logger = logging.getLogger(__name__)

CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
CASCADE = ("3d_lowres", "3d_cascade_fullres")  # (previous stage, next stage), nnU-Net's names
_STAGE_LISTS = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage")


@dataclass(frozen=True)
class TinyOptions:
    """Size limits of the tiny planner (defaults: ~1 s per CPU training step at batch 2)."""

    base_features: int = 8
    max_features: int = 64
    max_stages: int = 4
    max_patch_voxels: int = 40 * 56 * 56
    max_patch_pixels_2d: int = 96 * 96
    batch_size: int = 2
    #: the ``2d`` configuration's batch (slices of at most ``max_patch_pixels_2d``: ~1/2 of a 3D step's voxels)
    batch_size_2d: int = 8
    decoder_convs: int = 1
    spacing_factor: float = 1.0
    #: plan ``3d_lowres`` at this factor x the ``3d_fullres`` spacing plus ``3d_cascade_fullres`` (None: nnU-Net's rule)
    lowres_factor: float | None = None


class _TinyMixin:
    """Hook overrides shared by the tiny planners (mixed into an nnU-Net ExperimentPlanner subclass)."""

    tiny: TinyOptions

    def _apply_tiny(self, tiny: TinyOptions) -> None:
        self.tiny = tiny
        self.UNet_base_num_features = tiny.base_features
        self.UNet_max_features_3d = tiny.max_features
        self.UNet_max_features_2d = tiny.max_features
        self.UNet_blocks_per_stage_decoder = (tiny.decoder_convs,) * 13
        self.UNet_min_batch_size = tiny.batch_size

    def determine_fullres_target_spacing(self) -> np.ndarray:
        return np.asarray(super().determine_fullres_target_spacing()) * self.tiny.spacing_factor  # type: ignore[misc]

    def get_plans_for_configuration(self, spacing: Any, median_shape: Any, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        limit = self.tiny.max_patch_pixels_2d if len(spacing) == 2 else self.tiny.max_patch_voxels
        capped = _cap_shape(median_shape, limit)
        plan = super().get_plans_for_configuration(spacing, capped, data_identifier,  # type: ignore[misc]
                                                   approximate_n_voxels_dataset, _cache)
        plan["median_image_size_in_voxels"] = median_shape
        plan["batch_size"] = self.tiny.batch_size_2d if len(spacing) == 2 else self.tiny.batch_size
        _truncate_stages(plan["architecture"]["arch_kwargs"], self.tiny.max_stages)
        return plan

    def plan_experiment(self) -> dict:
        plans = super().plan_experiment()  # type: ignore[misc]
        if self.tiny.lowres_factor is not None:
            _force_lowres(self, plans, self.tiny.lowres_factor)
            self.save_plans(plans)  # type: ignore[attr-defined]
        return plans


def _force_lowres(planner: Any, plans: dict, factor: float) -> None:
    """Add ``3d_lowres`` (at ``factor`` x the full-res spacing) and ``3d_cascade_fullres`` as nnU-Net does."""
    configs = plans["configurations"]
    full = configs.get("3d_fullres")
    if full is None:
        raise DatasetError("nnU-Net planned no 3d_fullres configuration, so there is no cascade to plan")
    lowres, cascade = CASCADE
    spacing = np.asarray(full["spacing"], dtype=float) * factor
    median = np.asarray(full["median_image_size_in_voxels"], dtype=float) / factor
    n_voxels = float(np.prod(median) * planner.dataset_json["numTraining"])
    low = planner.get_plans_for_configuration(spacing, tuple(round(m) for m in median),
                                              planner.generate_data_identifier(lowres), n_voxels, {})
    low["batch_dice"], full["batch_dice"] = False, True  # nnU-Net's choice when both exist
    low["next_stage"] = cascade
    others = {k: v for k, v in configs.items() if k not in CASCADE}
    plans["configurations"] = {**others, lowres: low, cascade: {"inherits_from": "3d_fullres", "previous_stage": lowres}}
    logger.info("tiny planner: %s at %s x the 3d_fullres spacing (%s), patch %s; %s inherits 3d_fullres",
                lowres, factor, [round(float(s), 3) for s in spacing], list(low["patch_size"]), cascade)


def _cap_shape(shape: Any, max_voxels: int) -> np.ndarray:
    """Scale ``shape`` down (keeping its aspect) until it has at most ``max_voxels`` elements."""
    shape = np.asarray(shape, dtype=float)
    n = float(np.prod(shape))
    if n <= max_voxels:
        return shape
    return np.maximum(np.floor(shape * (max_voxels / n) ** (1 / len(shape))), 8)


def _truncate_stages(arch_kwargs: dict[str, Any], max_stages: int) -> None:
    """Keep the first ``max_stages`` stages (the patch stays divisible: fewer poolings)."""
    n = int(arch_kwargs["n_stages"])
    if n <= max_stages:
        return
    arch_kwargs["n_stages"] = max_stages
    for key in _STAGE_LISTS:
        if key in arch_kwargs:
            arch_kwargs[key] = list(arch_kwargs[key])[:max_stages]
    arch_kwargs["n_conv_per_stage_decoder"] = list(arch_kwargs["n_conv_per_stage_decoder"])[: max_stages - 1]


class TinyPlanner(_TinyMixin, ExperimentPlanner):
    """nnU-Net's default (PlainConvUNet) planner, shrunk for CPU."""

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlansTiny",
                 overwrite_target_spacing: Any = None, suppress_transpose: bool = False,
                 tiny: TinyOptions = TinyOptions()) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self._apply_tiny(tiny)


class TinyResEncPlanner(_TinyMixin, ResEncUNetPlanner):
    """nnU-Net's residual-encoder planner, shrunk for CPU."""

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetResEncPlansTiny",
                 overwrite_target_spacing: Any = None, suppress_transpose: bool = False,
                 tiny: TinyOptions = TinyOptions()) -> None:
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self._apply_tiny(tiny)
        self.UNet_blocks_per_stage_encoder = (1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2)


#: --planner name -> (full-size planner, tiny planner)
PLANNERS: dict[str, tuple[type[ExperimentPlanner], type[ExperimentPlanner]]] = {
    "default": (ExperimentPlanner, TinyPlanner),
    "resenc": (nnUNetPlannerResEncM, TinyResEncPlanner),
}


@dataclass(frozen=True)
class PlanResult:
    dataset: str
    plans_identifier: str
    plans_file: Path
    configurations: dict[str, dict[str, Any]]

    def summary(self) -> list[str]:
        lines = [f"{self.dataset}: plans {self.plans_identifier} ({self.plans_file})"]
        for name, cfg in self.configurations.items():
            arch = cfg.get("architecture", {}).get("arch_kwargs", {})
            lines.append(f"  {name:<12} patch {cfg.get('patch_size')} spacing "
                         f"{[round(float(s), 3) for s in cfg.get('spacing', [])]} batch {cfg.get('batch_size')} "
                         f"features {arch.get('features_per_stage')}")
        return lines


def plan_and_preprocess(dataset: str | int, *, configurations: tuple[str, ...] = ("3d_fullres",),
                        tiny: bool = False, tiny_options: TinyOptions | None = None, planner: str = "default",
                        plans_name: str | None = None, num_processes: int = 2,
                        overwrite_target_spacing: tuple[float, ...] | None = None,
                        verify_integrity: bool = True) -> PlanResult:
    """Fingerprint, plan and preprocess ``dataset`` (nnU-Net folders must be configured).

    Returns the plans identifier and the planned configurations. Raises DatasetError on bad input.
    """
    bad = [c for c in configurations if c not in CONFIGURATIONS]
    if bad:
        raise DatasetError(f"unknown configuration(s) {bad}; choose from {list(CONFIGURATIONS)}")
    if planner not in PLANNERS:
        raise DatasetError(f"unknown planner {planner!r}; choose from {sorted(PLANNERS)}")
    factor = (tiny_options or TinyOptions()).lowres_factor
    if factor is not None and (not tiny or factor <= 1):
        raise DatasetError(f"lowres_factor {factor!r} needs the tiny planner (--tiny) and a factor > 1")
    paths = current()
    name = resolve_dataset(dataset, paths)
    if not (paths.raw / name / "dataset.json").is_file():
        raise DatasetError(f"{paths.raw / name}/dataset.json is missing; run `pancreas convert` first")
    _fingerprint(name, num_processes, verify_integrity)
    planner_cls = PLANNERS[planner][1 if tiny else 0]
    kwargs: dict[str, Any] = {"overwrite_target_spacing": list(overwrite_target_spacing)
                              if overwrite_target_spacing else None}
    if plans_name:
        kwargs["plans_name"] = plans_name
    if tiny:
        kwargs["tiny"] = tiny_options or TinyOptions()
    plans_obj = planner_cls(name, **kwargs)
    plans = plans_obj.plan_experiment()
    identifier = plans_obj.plans_identifier
    for cfg in _to_preprocess(plans, configurations, name):
        DefaultPreprocessor(verbose=False).run(name, cfg, identifier, num_processes=num_processes)
    _copy_gt(name)
    plans_file = paths.preprocessed / name / f"{identifier}.json"
    if tiny:
        logger.info("tiny planner options: %s", asdict(tiny_options or TinyOptions()))
    return PlanResult(name, identifier, plans_file,
                      {c: plans["configurations"][c] for c in configurations if c in plans["configurations"]})


def _to_preprocess(plans: dict[str, Any], configurations: tuple[str, ...], name: str) -> list[str]:
    """The requested configurations that nnU-Net planned, one per data identifier (a cascade's is 3d_fullres's)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager, picked = PlansManager(plans), {}
    for cfg in configurations:
        if cfg not in plans["configurations"]:
            hint = " (with --tiny, --lowres-factor F plans the cascade)" if cfg in CASCADE else ""
            logger.warning("nnU-Net planned no %s configuration for %s; skipping it%s", cfg, name, hint)
            continue
        picked.setdefault(manager.get_configuration(cfg).data_identifier, cfg)
    return list(picked.values())


def _fingerprint(name: str, num_processes: int, verify: bool) -> None:
    paths = current()
    if verify:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

        try:
            verify_dataset_integrity(str(paths.raw / name), num_processes)
        except (AssertionError, RuntimeError) as exc:
            raise DatasetError(f"nnU-Net rejected dataset {paths.raw / name}: {exc}") from exc
    DatasetFingerprintExtractor(name, num_processes, verbose=False).run(overwrite_existing=False)


def _copy_gt(name: str) -> None:
    """Copy labels to ``nnUNet_preprocessed/NAME/gt_segmentations`` (as nnU-Net does) and our tables."""
    import shutil

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    paths = current()
    target = paths.preprocessed / name / "gt_segmentations"
    target.mkdir(parents=True, exist_ok=True)
    dataset_json = load_json(str(paths.raw / name / "dataset.json"))
    for key, files in get_filenames_of_train_images_and_targets(str(paths.raw / name), dataset_json).items():
        dst = target / f"{key}{dataset_json['file_ending']}"
        if not dst.is_file():
            shutil.copyfile(files["label"], dst)
    for table in (SUBTYPES_FILE, SPLITS_FILE):  # training can then run without the raw folder
        if (paths.raw / name / table).is_file():
            shutil.copyfile(paths.raw / name / table, paths.preprocessed / name / table)


def patch_voxels(plans: dict[str, Any], configuration: str) -> int:
    return int(math.prod(plans["configurations"][configuration]["patch_size"]))
