"""Knowledge distillation: a narrower/shallower student learns from the teacher's soft outputs and labels.

The loss mixes, with weight ``alpha`` on the teacher::

    alpha * T² (KL(seg_t/T ‖ seg_s/T) + cls_weight · KL(cls_t/T ‖ cls_s/T))
    + (1 - alpha) * (CE(seg_s, labels) + soft Dice(seg_s, labels) + cls_weight · CE(cls_s, subtype))

The same loss fine-tunes a pruned network (teacher = the unpruned one). Two loops run it:

* :func:`finetune_nnunet` (preferred, ``NnUNetFinetune``): the training package's
  :class:`training.distillation.DistillationTrainer`, i.e. nnU-Net's loop with its augmentation, lesion
  oversampling and deep supervision, on a preprocessed nnU-Net dataset planned like the bundle;
* :func:`finetune`: a short, self-contained loop on preprocessed phantom patches (:mod:`optimize.data`)
  with random flips, for when no preprocessed dataset is at hand (tests, quick checks).
A width-reduced student starts from the teacher's magnitude-pruned weights (``init="teacher"``), tensors
whose names and shapes match are copied; ``init="random"`` starts from He initialization.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.data import PatchSet
from pancreas.bundle import NetworkConfig
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentSpec:
    """Student shape relative to the teacher: ``width`` × features per stage, ``convs`` per stage."""

    width: float = 0.5
    convs: int | None = None
    init: str = "teacher"

    @classmethod
    def parse(cls, arg: str | None) -> StudentSpec:
        """``"width=0.5:convs=1:init=random"`` (any subset, ':'-separated) -> StudentSpec."""
        fields: dict[str, Any] = {}
        for part in filter(None, (arg or "").split(":")):
            key, _, value = part.partition("=")
            casts = {"width": float, "convs": int, "init": str}
            if key not in casts or not value:
                raise PancreasError(f"distill option {part!r} is not understood; use width=F, convs=N, "
                                    "init=teacher|random (e.g. distill:width=0.5:convs=1)")
            fields[key] = casts[key](value)
        spec = cls(**fields)
        if not 0.0 < spec.width <= 1.0 or (spec.convs is not None and spec.convs < 1) \
                or spec.init not in ("teacher", "random"):
            raise PancreasError(f"distill options {fields} are out of range: 0 < width <= 1, convs >= 1, "
                                "init teacher|random")
        return spec


@dataclass(frozen=True)
class DistillConfig:
    """Fine-tune/distillation loop options."""

    steps: int = 150
    batch: int = 2
    lr: float = 1e-3
    weight_decay: float = 3e-5
    temperature: float = 2.0
    alpha: float = 0.5
    cls_weight: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class NnUNetFinetune:
    """Fine-tune with nnU-Net's loop on preprocessed ``dataset`` under ``workdir`` (``pancreas plan`` output)."""

    dataset: str
    workdir: Path = Path("work_dirs")
    plans: str = "nnUNetPlans"
    fold: str = "quiz"
    epochs: int = 100
    iters_per_epoch: int = 25
    lr: float = 1e-3
    warmup_epochs: int = 1
    device: str = "cpu"
    threads: int | None = None
    workers: int = 0


def student_config(plans: dict[str, Any], config: NetworkConfig, spec: StudentSpec) -> NetworkConfig:
    """The teacher's config with ``features_per_stage`` scaled and, optionally, fewer convs per stage."""
    from pancreas.network import architecture_kwargs

    _, kwargs, _ = architecture_kwargs(plans, config)
    override = dict(config.arch_kwargs_override)
    override["features_per_stage"] = [max(2, round(f * spec.width)) for f in kwargs["features_per_stage"]]
    if spec.convs is not None:
        for key in ("n_conv_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder"):
            if key in kwargs:
                override[key] = [min(int(n), spec.convs) for n in kwargs[key]]
    new = config.model_copy(deep=True)
    new.arch_kwargs_override = override
    return new


def build_student(teacher: Any, plans: dict[str, Any], config: NetworkConfig, spec: StudentSpec,
                  patch_size: list[int] | tuple[int, ...]) -> tuple[Any, NetworkConfig]:
    """Build the student; with ``init="teacher"`` copy the teacher's pruned-to-width weights into it."""
    from optimize.prune import PruneConfig, prune_network
    from pancreas.network import build_network

    cfg = student_config(plans, config, spec)
    student = build_network(plans, cfg, deep_supervision=False)
    if spec.init == "teacher":
        source = teacher
        if spec.width < 1.0:
            source = prune_network(teacher, plans, config, patch_size,
                                   prune_config=PruneConfig(ratio=1.0 - spec.width)).net
        own = student.state_dict()
        shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        student.load_state_dict(shared, strict=False)
        logger.info("student init: %d/%d tensors from the teacher", len(shared), len(own))
    return student, cfg


def distillation_loss(student_out: tuple[Any, Any], teacher_out: tuple[Any, Any] | None, labels: Any,
                      subtypes: Any, config: DistillConfig) -> tuple[Any, dict[str, float]]:
    """Total loss and its parts; ``teacher_out=None`` gives the label-only loss."""
    import torch.nn.functional as F

    seg, cls = student_out
    seg_ce = F.cross_entropy(seg, labels)
    prob = seg.softmax(1)
    onehot = F.one_hot(labels, seg.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, seg.ndim))
    dice = 1 - ((2 * (prob * onehot).sum(dims) + 1) / (prob.sum(dims) + onehot.sum(dims) + 1))[:, 1:].mean()
    cls_ce = F.cross_entropy(cls, subtypes)
    hard = seg_ce + dice + config.cls_weight * cls_ce
    parts = {"seg_ce": seg_ce.item(), "dice": dice.item(), "cls_ce": cls_ce.item()}
    if teacher_out is None:
        return hard, parts
    from training.losses import distillation_kl

    soft, kl_parts = distillation_kl(seg, cls, *teacher_out, temperature=config.temperature,
                                     cls_weight=config.cls_weight)
    parts.update({k: v.item() for k, v in kl_parts.items()})
    return config.alpha * soft + (1 - config.alpha) * hard, parts


def _batch(data: PatchSet, idx: np.ndarray, flips: tuple[int, ...]) -> tuple[Any, Any, Any]:
    import torch

    x = torch.from_numpy(data.images[idx])
    y = torch.from_numpy(data.labels[idx])
    if flips:
        x, y = x.flip([a + 2 for a in flips]), y.flip([a + 1 for a in flips])
    return x, y, torch.from_numpy(data.subtypes[idx])


def finetune(student: Any, teacher: Any | None, data: PatchSet, *, config: DistillConfig = DistillConfig()
             ) -> list[float]:
    """Train ``student`` (in place) for ``config.steps`` steps; returns the loss per step."""
    import torch
    from tqdm import tqdm

    if len(data) == 0:
        raise PancreasError("fine-tuning needs patches; got an empty PatchSet")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    teacher = copy.deepcopy(teacher).eval() if teacher is not None else None
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / max(1, config.steps)) ** 0.9)
    student.train()
    history = []
    for _ in tqdm(range(config.steps), desc="fine-tune", leave=False):
        idx = rng.choice(len(data), size=min(config.batch, len(data)), replace=False)
        flips = tuple(int(a) for a in np.flatnonzero(rng.random(3) < 0.5))
        x, y, s = _batch(data, idx, flips)
        with torch.no_grad():
            t_out = teacher(x) if teacher is not None else None
        loss, _ = distillation_loss(student(x), t_out, y, s, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 12.0)
        opt.step()
        sched.step()
        history.append(loss.item())
    student.eval()
    logger.info("fine-tune: loss %.4f -> %.4f over %d steps", history[0], history[-1], len(history))
    return history


def finetune_nnunet(student: Any, teacher: Any, plans: dict[str, Any], config: NetworkConfig, *,
                    nnunet: NnUNetFinetune, distill_config: DistillConfig = DistillConfig(),
                    tag: str = "student") -> tuple[Any, dict[str, Any]]:
    """Distil ``teacher`` into ``student`` (shape ``config``) with the training package; returns (student, summary).

    The student starts from its current weights; ``plans`` (the bundle's) must match the dataset's plans.
    """
    from training.distillation import DistillationOptions, distill_fold
    from training.nnunet_env import configure
    from training.trainer import TrainOptions

    configure(nnunet.workdir)
    options = TrainOptions(head=config.head, epochs=nnunet.epochs, iters_per_epoch=nnunet.iters_per_epoch,
                           val_iters=2, optimizer="adamw", initial_lr=nnunet.lr, warmup_epochs=nnunet.warmup_epochs,
                           cls_weight=distill_config.cls_weight, num_workers=nnunet.workers,
                           save_every=max(1, nnunet.epochs), evaluate=False)
    kd = DistillationOptions(alpha=distill_config.alpha, temperature=distill_config.temperature,
                             cls_weight=distill_config.cls_weight)
    fold: int | str = int(nnunet.fold) if str(nnunet.fold).isdigit() else nnunet.fold
    trained, result = distill_fold(nnunet.dataset, teacher, config, init_state=student.state_dict(),
                                   plans_identifier=nnunet.plans, fold=fold, options=options, distillation=kd,
                                   device=nnunet.device, threads=nnunet.threads, seed=distill_config.seed,
                                   tag=tag, bundle_plans=plans)
    hist = result.history
    summary = {"engine": "nnunet", "dataset": nnunet.dataset, "plans": nnunet.plans, "fold": nnunet.fold,
               "epochs": len(hist), "iters_per_epoch": nnunet.iters_per_epoch, "lr": nnunet.lr,
               "steps": len(hist) * nnunet.iters_per_epoch, "alpha": kd.alpha, "temperature": kd.temperature,
               "loss_first": round(hist[0]["train_loss"], 4) if hist else None,
               "loss_last": round(hist[-1]["train_loss"], 4) if hist else None,
               "pseudo_dice_last": [round(hist[-1]["dice_pancreas"], 4), round(hist[-1]["dice_lesion"], 4)]
               if hist else None, "output_folder": str(result.output_folder)}
    return trained, summary
