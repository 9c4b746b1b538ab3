"""Distillation fine-tuning through nnU-Net's training loop: a student learns from a frozen teacher.

``DistillationTrainer(MultiTaskTrainer)`` overrides two more hooks:

* ``build_network_architecture`` -> the *student* (``NetworkConfig`` with ``arch_kwargs_override``, e.g. the
  pruned ``features_per_stage``), optionally starting from given weights (the pruned teacher's);
* ``training_loss`` (the multi-task trainer's loss hook) -> ``(1 - alpha) · multi-task loss
  + alpha · T² KL(teacher ‖ student)`` on the full-resolution segmentation logits and the class logits
  (:func:`training.losses.distillation_kl`).

Everything else (nnU-Net's data loader and augmentation, lesion oversampling, deep supervision, the
warm-up + PolyLR schedule, checkpoints, the per-epoch log) is the multi-task trainer's. This is how
``pancreas optimize --recipe prune:0.3`` / ``distill:width=0.5`` fine-tune when given a preprocessed
nnU-Net dataset (``--finetune-dataset``).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from pancreas.bundle import NetworkConfig
from pancreas.errors import DatasetError, PancreasError
from pancreas.network import MultiTaskUNet, build_network
from training.losses import distillation_kl
from training.precision import as_float
from training.trainer import MultiTaskTrainer, TrainOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillationOptions:
    """``alpha``: weight of the teacher term; ``temperature``: softening T; ``cls_weight``: class-KL weight."""

    alpha: float = 0.5
    temperature: float = 2.0
    cls_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0 or self.cls_weight < 0:
            raise PancreasError(f"distillation options out of range: {asdict(self)} (0 <= alpha <= 1, T > 0, "
                                "cls_weight >= 0)")


class DistillationTrainer(MultiTaskTrainer):
    """Multi-task trainer whose network is a student distilled from a frozen teacher."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher: nn.Module | None = None
        self.student_config: NetworkConfig | None = None
        self.student_init: dict[str, torch.Tensor] | None = None
        self.distillation = DistillationOptions()

    def set_distillation(self, teacher: nn.Module, student_config: NetworkConfig, *,
                         init_state: dict[str, torch.Tensor] | None = None,
                         options: DistillationOptions = DistillationOptions()) -> None:
        """Set teacher, student shape and starting weights; call before ``initialize()``."""
        if self.was_initialized:
            raise RuntimeError("set_distillation must be called before initialize()")
        if student_config.configuration != self.configuration_name:
            raise DatasetError(f"student is for configuration {student_config.configuration!r}, the trainer for "
                               f"{self.configuration_name!r}")
        self.teacher = copy.deepcopy(teacher).to(self.device).eval().requires_grad_(False)
        self.student_config = student_config
        self.student_init = init_state
        self.distillation = options
        self.options = replace(self.options, head=student_config.head)

    @property
    def network_config(self) -> NetworkConfig:
        return self.student_config if self.student_config is not None else super().network_config

    def build_network_architecture(self, plans_manager: Any, configuration_manager: Any, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> MultiTaskUNet:
        if self.teacher is None:
            raise RuntimeError("DistillationTrainer needs set_distillation(teacher, student_config) before "
                               "initialize()")
        net = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                 num_output_channels, enable_deep_supervision)
        if self.student_init is not None:
            net.load_state_dict(self.student_init, strict=True)
        return net

    def training_loss(self, data: torch.Tensor, target: Any, labels: torch.Tensor,
                      weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(1 - alpha) · multi-task loss + alpha · T² KL(teacher ‖ student)``; parts as the parent's."""
        with torch.no_grad():
            seg_t, cls_t = self.teacher(data)  # type: ignore[misc]
        seg_t = seg_t[0] if isinstance(seg_t, (list, tuple)) else seg_t  # a deep-supervision teacher
        seg_t, cls_t = as_float(seg_t, self.device.type), as_float(cls_t, self.device.type)
        seg, cls = self.network_outputs(data)
        hard, parts = self.loss(seg, target, cls, labels, weight)
        top = seg[0] if isinstance(seg, (list, tuple)) else seg
        o = self.distillation
        soft, _ = distillation_kl(top, cls, seg_t, cls_t, temperature=o.temperature, cls_weight=o.cls_weight)
        return (1 - o.alpha) * hard + o.alpha * soft, parts

    def student(self) -> MultiTaskUNet:
        """The trained student as a plain eval-mode network (no deep supervision), on the CPU."""
        net = build_network(self.plans_manager.plans, self.network_config, deep_supervision=False)
        net.load_state_dict({k: v.detach().cpu() for k, v in self._plain_network().state_dict().items()})
        return net.eval()


def check_same_plans(bundle_plans: dict[str, Any], dataset_plans: dict[str, Any], configuration: str) -> None:
    """Raise unless the dataset was preprocessed exactly as the bundle's network expects."""
    a = bundle_plans["configurations"].get(configuration)
    b = dataset_plans["configurations"].get(configuration)
    if b is None:
        raise DatasetError(f"the fine-tuning dataset's plans have no configuration {configuration!r}")
    keys = ("patch_size", "spacing", "normalization_schemes", "architecture")
    diff = [k for k in keys if a.get(k) != b.get(k)]
    for k in ("transpose_forward", "foreground_intensity_properties_per_channel"):
        if bundle_plans.get(k) != dataset_plans.get(k):
            diff.append(k)
    if diff:
        raise DatasetError(f"the fine-tuning dataset was planned differently from the bundle ({', '.join(diff)} "
                           "differ); convert/plan it with the bundle's plans (same --plans and target spacing)")


def trainer_name_for(tag: str) -> str:
    """A class name (nnU-Net's output folder) for one fine-tune, e.g. ``DistillationTrainer_prune_0_3``."""
    return "DistillationTrainer_" + re.sub(r"\W+", "_", tag).strip("_")


def distill_fold(dataset: str | int, teacher: nn.Module, student_config: NetworkConfig, *,
                 init_state: dict[str, torch.Tensor] | None = None, plans_identifier: str = "nnUNetPlans",
                 fold: int | str = "quiz", options: TrainOptions | None = None,
                 distillation: DistillationOptions = DistillationOptions(), device: str = "cpu",
                 threads: int | None = None, seed: int = 12345, tag: str = "student",
                 bundle_plans: dict[str, Any] | None = None) -> tuple[MultiTaskUNet, Any]:
    """Fine-tune/distil a student with nnU-Net's loop; returns (student, :class:`training.runner.FoldResult`).

    ``bundle_plans`` (the teacher bundle's plans) are checked against the dataset's with
    :func:`check_same_plans` before any training starts.
    """
    from training.runner import load_plans, train_fold

    options = options or TrainOptions()
    if bundle_plans is not None:
        _, plans, _ = load_plans(dataset, plans_identifier)
        check_same_plans(bundle_plans, plans, student_config.configuration)
    holder: dict[str, DistillationTrainer] = {}

    def setup(trainer: MultiTaskTrainer) -> None:
        assert isinstance(trainer, DistillationTrainer)
        trainer.set_distillation(teacher, student_config, init_state=init_state, options=distillation)
        holder["trainer"] = trainer

    result = train_fold(dataset, configuration=student_config.configuration, fold=fold,
                        plans_identifier=plans_identifier, options=options, device=device, threads=threads,
                        seed=seed, trainer_name=trainer_name_for(tag), trainer_cls=DistillationTrainer, setup=setup)
    return holder["trainer"].student(), result
