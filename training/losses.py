"""Multi-task loss: nnU-Net's segmentation loss + λ · lesion-subtype classification loss.

Plain modules (no trainer needed)::

    loss = MultiTaskLoss(seg_loss, ClassificationLoss(...), LossWeighting.fixed(1.0))
    total, parts = loss(seg_outputs, seg_targets, cls_logits, subtypes, sample_weight)

* ``seg_loss`` is nnU-Net's ``DC_and_CE_loss`` wrapped in ``DeepSupervisionWrapper`` (built by the trainer);
  :class:`FocalCELoss` can replace its CE term (lesion-focused option), ``seg_class_weights`` weight it.
* :class:`ClassificationLoss`: cross-entropy with class weights, label smoothing, optional focal term,
  and an optional per-sample weight (used to down-weight patches that miss the lesion).
* :class:`LossWeighting`: fixed λ, or learned homoscedastic uncertainty weighting (Kendall et al. 2018):
  ``L = exp(-s_seg)·L_seg + s_seg/2 + exp(-s_cls)·L_cls + s_cls/2`` with learned log-variances ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pancreas.errors import PancreasError

WEIGHTINGS = ("fixed", "learned")


class FocalCELoss(nn.Module):
    """Softmax focal loss ``(1-p_t)^γ · CE`` (γ=0 is plain CE), nnU-Net target layout [B,1,*S] or [B,*S]."""

    def __init__(self, gamma: float = 2.0, weight: Sequence[float] | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise PancreasError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32) if weight is not None else None,
                             persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == logits.ndim:
            target = target[:, 0]
        target = target.long()
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight is not None:
            w = self.weight.to(logits.device)[target]
            return (loss * w).sum() / w.sum().clamp_min(1e-8)
        return loss.mean()


class ClassificationLoss(nn.Module):
    """Weighted cross-entropy (+ label smoothing, + optional focal term) with per-sample weights."""

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 focal_gamma: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise PancreasError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        if focal_gamma < 0:
            raise PancreasError(f"focal gamma must be >= 0, got {focal_gamma}")
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma
        cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", cw, persistent=False)

    def forward(self, logits: Tensor, labels: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, labels, weight=self.class_weights, reduction="none",
                             label_smoothing=self.label_smoothing)
        if self.focal_gamma > 0:
            pt = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
            ce = ce * (1 - pt).clamp_min(0) ** self.focal_gamma
        w = torch.ones_like(ce) if sample_weight is None else sample_weight.to(ce)
        if self.class_weights is not None:
            w = w * self.class_weights.to(ce.device)[labels]
        return (ce * w).sum() / w.sum().clamp_min(1e-8)


class LossWeighting(nn.Module):
    """Combines the two task losses: fixed λ or learned uncertainty weighting."""

    def __init__(self, mode: str = "fixed", cls_weight: float = 1.0) -> None:
        super().__init__()
        if mode not in WEIGHTINGS:
            raise PancreasError(f"unknown loss weighting {mode!r}; choose one of {list(WEIGHTINGS)}")
        if cls_weight < 0:
            raise PancreasError(f"classification loss weight must be >= 0, got {cls_weight}")
        self.mode = mode
        self.cls_weight = cls_weight
        # log-variances s_seg, s_cls (only trained in "learned" mode); s_cls starts at -log(λ)
        init = torch.tensor([0.0, -float(torch.log(torch.tensor(max(cls_weight, 1e-6))))])
        self.log_vars = nn.Parameter(init, requires_grad=(mode == "learned"))

    def forward(self, seg: Tensor, cls: Tensor) -> Tensor:
        if self.mode == "fixed":
            return seg + self.cls_weight * cls
        s = self.log_vars
        return torch.exp(-s[0]) * seg + 0.5 * s[0] + torch.exp(-s[1]) * cls + 0.5 * s[1]

    def effective_lambda(self) -> float:
        if self.mode == "fixed":
            return self.cls_weight
        s = self.log_vars.detach()
        return float(torch.exp(-s[1]) / torch.exp(-s[0]))


class MultiTaskLoss(nn.Module):
    """``weighting(seg_loss(seg, target), cls_loss(logits, labels, sample_weight))``."""

    def __init__(self, seg_loss: nn.Module, cls_loss: ClassificationLoss, weighting: LossWeighting) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.cls_loss = cls_loss
        self.weighting = weighting

    def forward(self, seg_out: Any, seg_target: Any, cls_logits: Tensor, labels: Tensor,
                sample_weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        seg = self.seg_loss(seg_out, seg_target)
        cls = self.cls_loss(cls_logits, labels, sample_weight)
        total = self.weighting(seg, cls)
        return total, {"seg": seg.detach(), "cls": cls.detach()}


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Inverse-frequency class weights normalized to mean 1 (absent classes get weight 1)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).float()
    inv = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.ones_like(counts))
    return [float(v) for v in inv / inv.mean()]


def lesion_presence_weight(target: Tensor, lesion_label: int, absent_weight: float) -> Tensor:
    """Per-sample weight: 1 if the patch contains lesion voxels, ``absent_weight`` otherwise.

    A patch that misses the lesion still carries its case's subtype, but its evidence is weak; its
    classification loss is down-weighted rather than dropped (the mask head pools the pancreas then).
    """
    present = (target == lesion_label).flatten(1).any(1)
    return torch.where(present, torch.ones_like(present, dtype=torch.float32),
                       torch.full_like(present, absent_weight, dtype=torch.float32))


def distillation_kl(seg: Tensor, cls: Tensor, seg_teacher: Tensor, cls_teacher: Tensor, *,
                    temperature: float = 2.0, cls_weight: float = 0.5) -> tuple[Tensor, dict[str, Tensor]]:
    """Hinton's soft-target term ``T² (KL(seg_t ‖ seg) + cls_weight · KL(cls_t ‖ cls))`` at temperature ``T``.

    ``seg``/``seg_teacher`` are ``[B,C,*S]`` logits (KL summed over classes, averaged over voxels);
    ``cls``/``cls_teacher`` are ``[B,K]`` logits. Returns the term and its two parts (detached).
    """
    if temperature <= 0:
        raise PancreasError(f"distillation temperature must be > 0, got {temperature}")
    t = temperature
    seg_kl = F.kl_div(F.log_softmax(seg.float() / t, 1), F.log_softmax(seg_teacher.float() / t, 1),
                      log_target=True, reduction="none").sum(1).mean() * t * t
    cls_kl = F.kl_div(F.log_softmax(cls.float() / t, 1), F.log_softmax(cls_teacher.float() / t, 1),
                      log_target=True, reduction="batchmean") * t * t
    return seg_kl + cls_weight * cls_kl, {"seg_kl": seg_kl.detach(), "cls_kl": cls_kl.detach()}
