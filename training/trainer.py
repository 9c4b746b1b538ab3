"""nnU-Net v2 trainer subclasses for the multi-task network (hook overrides only).

``MultiTaskTrainer(nnUNetTrainer)`` overrides:

* ``build_network_architecture``  -> :func:`pancreas.network.build_network` (encoder + decoder + head);
* ``_build_loss``                 -> :class:`training.losses.MultiTaskLoss` around nnU-Net's DC+CE
  (deep supervision), optionally with a focal / class-weighted CE term;
* ``configure_optimizers``        -> nnU-Net's SGD plus the learned loss weights; linear warm-up then PolyLR;
* ``get_dataloaders``             -> nnU-Net's pipeline with lesion oversampling and a configurable number of
  augmentation workers;
* ``train_step`` (loss via the ``training_loss`` hook) / ``validation_step`` / ``on_*_epoch_end`` -> multi-task losses, pseudo-DSC and patch
  classification F1, one progress line per epoch;
* ``perform_actual_validation``   -> our held-out evaluation (sliding window over the fold's validation cases,
  whole-pancreas DSC, lesion DSC, macro-F1) instead of nnUNetPredictor (which expects a single output).

Cascade (nnU-Net's ``3d_lowres`` -> ``3d_cascade_fullres``, linked in the plans by ``next_stage`` /
``previous_stage``): a stage with a next stage writes each validation case's prediction to
``<output_folder_base>/predicted_next_stage/<next>/<case>`` with nnU-Net's ``resample_and_save`` (fold ``all``
validates, so predicts, every case in-sample, as nnU-Net does); the cascade stage gets 1 CT channel plus one
per foreground label (``determine_num_input_channels``), nnU-Net's loader and transforms bring the
low-res predictions in (``folder_with_segs_from_previous_stage``) and its evaluation adds them one-hot.

Subtypes come with each patch via ``batch['keys']`` (see :mod:`training.dataloading`). A patch that misses
the lesion keeps its case's subtype but its classification loss is weighted by ``absent_lesion_weight``
(:func:`training.losses.lesion_presence_weight`); the mask head pools the pancreas in that case.

Options are set with :meth:`MultiTaskTrainer.set_options` before ``initialize()`` (nnU-Net records the
``__init__`` arguments by name, so ``__init__`` keeps nnU-Net's signature). For ``nnUNetv2_train ... -tr
nnUNetTrainerMultiTask`` on hosts with a working torchvision, the class defaults are used.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import time
from typing import Any

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.inference.export_prediction import resample_and_save
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from pancreas import LABELS
from pancreas.bundle import HeadConfig, NetworkConfig
from pancreas.errors import DatasetError
from pancreas.metrics import macro_f1
from pancreas.network import MultiTaskUNet, build_network
from pancreas.sources import SOURCES, UNKNOWN
from training.dataloading import (
    LesionOversamplingDataLoader,
    find_sources,
    find_subtypes,
    make_augmenters,
    source_sampling_probabilities,
)
from training.holdout import evaluate_preprocessed
from training.losses import (
    ClassificationLoss,
    FocalCELoss,
    LossWeighting,
    MultiTaskLoss,
    balanced_class_weights,
    lesion_presence_weight,
)
from training.nnunet_env import current
from training.precision import TRAINING_PRECISIONS, as_float, training_autocast
from training.subtypes import SPLITS_FILE, read_quiz_splits, stratified_splits

logger = logging.getLogger(__name__)

QUIZ_FOLD = "quiz"  # pseudo-fold: train on the quiz's train split, validate on its validation split
_SEG_FILES = (".b2nd", ".npz", ".npy")  # how nnU-Net's datasets store a previous stage's predictions


@dataclass(frozen=True)
class TrainOptions:
    """Everything that distinguishes one multi-task training run (written next to its results)."""

    head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int = 100
    iters_per_epoch: int = 50
    val_iters: int = 5
    optimizer: str = "sgd"
    initial_lr: float = 1e-2
    warmup_epochs: int = 3
    cls_weight: float = 0.5
    weighting: str = "fixed"
    cls_focal_gamma: float = 0.0
    label_smoothing: float = 0.05
    balanced_class_weights: bool = True
    seg_focal_gamma: float = 0.0
    seg_class_weights: tuple[float, ...] | None = None
    oversample_foreground: float = 0.5
    lesion_oversample: float = 0.5
    absent_lesion_weight: float = 0.25
    #: sources whose cases train the classifier (None: all). ``("phantom",)`` keeps real cases that are all
    #: one subtype from teaching "real texture means that subtype"; they still train the segmentation.
    cls_sources: tuple[str, ...] | None = None
    #: relative weight with which a training case of each source is drawn for a patch (None: all cases
    #: equally likely, nnU-Net's default; unlisted sources weigh 1). ``{"phantom": 0.25}`` draws each phantom
    #: a quarter as often as each real case. Passed to nnU-Net's loader as ``sampling_probabilities``.
    source_weights: dict[str, float] | None = None
    da5: bool = False
    #: CPU training arithmetic (:mod:`training.precision`): ``fp32``, or ``bf16`` autocast (faster on CPUs
    #: with AVX512-BF16); CUDA always uses nnU-Net's fp16 autocast
    precision: str = "fp32"
    #: nnU-Net's deep supervision (loss on every decoder resolution); False is nnU-Net's
    #: ``nnUNetTrainerNoDeepSupervision``: the loss on the full-resolution output only
    deep_supervision: bool = True
    #: nnU-Net checkpoint whose weights start the training (phantom pre-training, then fine-tuning); every
    #: tensor but the 1x1 segmentation layers must match (nnU-Net's ``load_pretrained_weights``)
    pretrained_weights: str | None = None
    num_workers: int = 0
    save_every: int = 50
    evaluate: bool = True

    def __post_init__(self) -> None:
        if self.precision not in TRAINING_PRECISIONS:
            raise DatasetError(f"precision {self.precision!r}: expected one of {list(TRAINING_PRECISIONS)}")
        unknown = sorted(set(self.cls_sources or ()) - set(SOURCES))
        if unknown or self.cls_sources == ():
            raise DatasetError(f"cls_sources {self.cls_sources!r}: each must be one of {list(SOURCES)} "
                               "(None trains the classifier on every case)")
        weights = self.source_weights or {}
        if sorted(set(weights) - set(SOURCES)) or not all(np.isfinite(w) and w >= 0 for w in weights.values()):
            raise DatasetError(f"source_weights {self.source_weights!r}: keys must be among {list(SOURCES)}, "
                               "weights finite and >= 0")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["head"] = self.head.model_dump()
        return d


#: per-epoch records of a fold (written each epoch, read back by a resumed run)
HISTORY_FILE = "history.json"


class WarmupPolyLR:
    """Linear warm-up over ``warmup`` epochs, then nnU-Net's PolyLR (exponent 0.9); ``step(epoch)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int, warmup: int,
                 exponent: float = 0.9) -> None:
        self.optimizer, self.initial_lr, self.max_steps = optimizer, initial_lr, max(1, max_steps)
        self.warmup, self.exponent = max(0, warmup), exponent

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.initial_lr * (step + 1) / (self.warmup + 1)
        span = max(1, self.max_steps - self.warmup)
        return self.initial_lr * (1 - min(step - self.warmup, span - 1) / span) ** self.exponent

    def step(self, current_step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(current_step)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def _sgd(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr, weight_decay=weight_decay, momentum=0.99, nesterov=True)  # nnU-Net's


def _adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr, weight_decay=max(weight_decay, 1e-4))


#: TrainOptions.optimizer -> factory. "sgd" is nnU-Net's; "adamw" converges in far fewer steps (CPU budgets).
OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw}


class MultiTaskTrainer(nnUNetTrainer):
    """Multi-task nnU-Net trainer: segmentation (deep supervision) + lesion-subtype classification."""

    default_options = TrainOptions()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        plans = copy.deepcopy(plans)
        plans.setdefault("continue_training", False)  # nnUNetTrainer.__init__ pops it without a default
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.options = self.default_options
        self.history: list[dict[str, Any]] = []
        self._epoch: dict[str, Any] = {}
        paths = current()
        self.subtypes = find_subtypes(self.plans_manager.dataset_name, paths.raw, paths.preprocessed)
        self.sources = find_sources(self.plans_manager.dataset_name, paths.raw, paths.preprocessed)
        self.set_options(self.default_options)

    # ---- configuration ------------------------------------------------------------------------------
    def set_options(self, options: TrainOptions) -> None:
        if self.was_initialized:
            raise RuntimeError("set_options must be called before initialize()")
        self.options = options
        self.num_epochs = options.epochs
        self.num_iterations_per_epoch = options.iters_per_epoch
        self.num_val_iterations_per_epoch = options.val_iters
        self.initial_lr = options.initial_lr
        self.oversample_foreground_percent = options.oversample_foreground
        self.save_every = options.save_every
        self.enable_deep_supervision = options.deep_supervision

    @property
    def network_config(self) -> NetworkConfig:
        channels = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        return NetworkConfig(configuration=self.configuration_name, head=self.options.head, input_channels=channels)

    def require_previous_stage(self, keys: list[str]) -> None:
        """Refuse to run a cascade stage whose previous stage's predictions for ``keys`` are missing."""
        if not self.is_cascaded:
            return
        folder = Path(self.folder_with_segs_from_previous_stage)
        missing = [k for k in keys if not any((folder / f"{k}{ext}").is_file() for ext in _SEG_FILES)]
        if missing:
            prev = self.configuration_manager.previous_stage_name
            raise DatasetError(
                f"{self.configuration_name} needs the {prev} stage's predictions of its cases in {folder}; "
                f"{len(missing)} are missing (e.g. {missing[0]}). Train {prev} first with the same trainer and plans "
                f"(`pancreas train {self.plans_manager.dataset_name} --config {prev} --plans "
                f"{self.plans_manager.plans_name}`, on fold 'all' or on every fold): its validation writes them")

    def print_to_log_file(self, *args: Any, also_print_to_console: bool = True, add_timestamp: bool = True) -> None:
        """nnU-Net's log file only; the console gets our per-epoch line (logging) instead."""
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)

    def classifies(self, case: str) -> bool:
        """Whether ``case`` contributes to the classification loss (see ``TrainOptions.cls_sources``)."""
        allowed = self.options.cls_sources
        return allowed is None or self.sources.get(case) in allowed

    def do_split(self) -> tuple[list[str], list[str]]:
        """nnU-Net's 5-fold split (per source when the dataset mixes sources, see
        :func:`training.subtypes.stratified_splits`); ``fold="quiz"`` uses the quiz's own split instead."""
        if self.fold != QUIZ_FOLD:
            self._write_stratified_splits()
            return super().do_split()
        paths = current()
        name = self.plans_manager.dataset_name
        split = read_quiz_splits(paths.raw / name) if (paths.raw / name).is_dir() else None
        if split is None and (paths.preprocessed / name / SPLITS_FILE).is_file():
            split = read_quiz_splits(paths.preprocessed / name)
        if split is None:
            raise DatasetError(f"fold 'quiz' needs quiz_splits.json in {paths.raw / name}; the dataset was not "
                               "converted from a quiz folder with a validation split")
        return list(split["train"]), list(split["validation"])

    def _write_stratified_splits(self) -> None:
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if self.fold == "all" or splits_file.is_file() or len(set(self.sources.values())) < 2:
            return
        dataset_class = self.dataset_class or infer_dataset_class(self.preprocessed_dataset_folder)
        cases = dataset_class.get_identifiers(self.preprocessed_dataset_folder)
        splits = stratified_splits({c: self.sources.get(c, UNKNOWN) for c in cases})
        splits_file.write_text(json.dumps(splits, indent=1))
        logger.info("wrote a source-stratified 5-fold split to %s", splits_file)

    # ---- hooks: network, loss, optimizer -------------------------------------------------------------
    def build_network_architecture(self, plans_manager: Any, configuration_manager: Any, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> MultiTaskUNet:
        cfg = self.network_config
        if num_output_channels != cfg.num_seg_classes or num_input_channels != cfg.input_channels:
            raise DatasetError(f"dataset has {num_input_channels} channel(s) and {num_output_channels} labels; the "
                               f"multi-task network expects {cfg.input_channels} and {cfg.num_seg_classes} "
                               f"({LABELS})")
        return build_network(plans_manager.plans, cfg, deep_supervision=enable_deep_supervision)

    def _build_loss(self) -> MultiTaskLoss:
        o = self.options
        seg = super()._build_loss()
        inner = seg.loss if isinstance(seg, DeepSupervisionWrapper) else seg
        if o.seg_focal_gamma > 0:
            inner.ce = FocalCELoss(o.seg_focal_gamma, o.seg_class_weights)
        elif o.seg_class_weights is not None:
            inner.ce = RobustCrossEntropyLoss(weight=torch.tensor(o.seg_class_weights, dtype=torch.float32))
        weights = None
        if o.balanced_class_weights:
            tr_keys, _ = self.do_split()
            weights = balanced_class_weights([self.subtypes[k] for k in tr_keys
                                              if k in self.subtypes and self.classifies(k)],
                                             self.network_config.num_cls_classes)
        cls = ClassificationLoss(weights, o.label_smoothing, o.cls_focal_gamma)
        return MultiTaskLoss(seg, cls, self.loss_weighting).to(self.device)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, WarmupPolyLR]:
        self.loss_weighting = LossWeighting(self.options.weighting, self.options.cls_weight).to(self.device)
        groups: list[dict[str, Any]] = [{"params": list(self.network.parameters())}]
        if self.options.weighting == "learned":
            groups.append({"params": list(self.loss_weighting.parameters()), "weight_decay": 0.0})
        optimizer = OPTIMIZERS[self.options.optimizer](groups, self.initial_lr, self.weight_decay)
        return optimizer, WarmupPolyLR(optimizer, self.initial_lr, self.num_epochs, self.options.warmup_epochs)

    # ---- hooks: data ---------------------------------------------------------------------------------
    def get_dataloaders(self) -> tuple[Any, Any]:
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch, mirror = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        tr_t = self.get_training_transforms(
            patch, rotation, ds_scales, mirror, dummy_2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels, regions=None,
            ignore_label=lm.ignore_label)
        val_t = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded,
                                               foreground_labels=lm.foreground_labels, regions=None,
                                               ignore_label=lm.ignore_label)
        tr_keys, val_keys = self.do_split()
        self.require_previous_stage(list(tr_keys) + list(val_keys))
        ds_tr, ds_val = self.get_tr_and_val_datasets()
        kw = {"oversample_foreground_percent": self.oversample_foreground_percent,
              "pad_sides": None, "probabilistic_oversampling": self.probabilistic_oversampling,
              "lesion_p": self.options.lesion_oversample, "lesion_label": LABELS["lesion"]}
        weights = source_sampling_probabilities(ds_tr.identifiers, self.sources, self.options.source_weights)
        dl_tr = LesionOversamplingDataLoader(ds_tr, self.batch_size, initial_patch, patch, lm, transforms=tr_t,
                                             sampling_probabilities=weights, **kw)
        dl_val = LesionOversamplingDataLoader(ds_val, self.batch_size, patch, patch, lm, transforms=val_t,
                                              sampling_probabilities=None, **kw)
        tr, val = make_augmenters(dl_tr, dl_val, self.options.num_workers, self.device.type == "cuda")
        next(tr)
        next(val)
        return tr, val

    def _batch(self, batch: dict) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        try:
            labels = torch.tensor([self.subtypes[k] for k in batch["keys"]], device=self.device)
        except KeyError as exc:
            raise DatasetError(f"case {exc} has no entry in subtypes.csv; re-run `pancreas convert`") from exc
        top = target[0] if isinstance(target, list) else target
        weight = lesion_presence_weight(top, LABELS["lesion"], self.options.absent_lesion_weight)
        if self.options.cls_sources is not None:
            keep = torch.tensor([self.classifies(k) for k in batch["keys"]], device=weight.device)
            weight = weight * keep.to(weight.dtype)
        return data, target, labels, weight

    def _autocast(self) -> Any:
        return training_autocast(self.device.type, self.options.precision)

    def network_outputs(self, data: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The network's (segmentation, classification) outputs; float32 after CPU bf16 autocast."""
        seg, cls = self.network(data)
        return as_float(seg, self.device.type), as_float(cls, self.device.type)

    # ---- hooks: steps --------------------------------------------------------------------------------
    def training_loss(self, data: torch.Tensor, target: Any, labels: torch.Tensor,
                      weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one training batch (hook: subclasses add terms, e.g. distillation)."""
        seg, cls = self.network_outputs(data)
        return self.loss(seg, target, cls, labels, weight)

    def train_step(self, batch: dict) -> dict:
        data, target, labels, weight = self._batch(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, parts = self.training_loss(data, target, labels, weight)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), "seg_loss": parts["seg"].cpu().numpy(),
                "cls_loss": parts["cls"].cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        out = collate_outputs(train_outputs)
        self._epoch = {"seg_loss": float(np.mean(out["seg_loss"])), "cls_loss": float(np.mean(out["cls_loss"]))}

    def validation_step(self, batch: dict) -> dict:
        data, target, labels, weight = self._batch(batch)
        with self._autocast():
            seg, cls = self.network_outputs(data)
            loss, _ = self.loss(seg, target, cls, labels, weight)
        out = seg[0] if isinstance(seg, (list, tuple)) else seg
        tgt = target[0] if isinstance(target, list) else target
        onehot = torch.zeros(out.shape, device=out.device, dtype=torch.float16)
        onehot.scatter_(1, out.argmax(1, keepdim=True), 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, tgt, axes=[0, *range(2, out.ndim)])
        keep = weight > 0 if self.options.cls_sources is not None else torch.ones_like(labels, dtype=torch.bool)
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.detach().cpu().numpy()[1:],
                "fp_hard": fp.detach().cpu().numpy()[1:], "fn_hard": fn.detach().cpu().numpy()[1:],
                "cls_pred": cls.argmax(1)[keep].cpu().tolist(), "cls_true": labels[keep].cpu().tolist()}

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        out = collate_outputs(val_outputs)
        self._epoch["patch_f1"] = float(macro_f1(out["cls_true"], out["cls_pred"]))

    def on_epoch_end(self) -> None:
        get = self.logger.get_value
        dice = [float(d) for d in get("dice_per_class_or_region", step=-1)]
        record = {"epoch": self.current_epoch, "lr": float(self.optimizer.param_groups[0]["lr"]),
                  "train_loss": float(get("train_losses", step=-1)), "val_loss": float(get("val_losses", step=-1)),
                  **self._epoch, "dice_pancreas": dice[0], "dice_lesion": dice[1] if len(dice) > 1 else float("nan"),
                  "lambda": self.loss_weighting.effective_lambda(), "time_s": time() - get("epoch_start_timestamps", -1)}
        self.history.append(record)
        logger.info("fold %s epoch %d/%d  loss %.4f (seg %.4f cls %.4f)  val %.4f  pseudo-DSC pancreas %.3f lesion "
                    "%.3f  patch-F1 %.3f  lr %.5f  %.1fs", self.fold, record["epoch"] + 1, self.num_epochs,
                    record["train_loss"], record["seg_loss"], record["cls_loss"], record["val_loss"],
                    record["dice_pancreas"], record["dice_lesion"], record["patch_f1"], record["lr"],
                    record["time_s"])
        with open(f"{self.output_folder}/{HISTORY_FILE}", "w") as f:
            json.dump({"options": self.options.to_json(), "epochs": self.history}, f, indent=1)
        self._nnunet_epoch_end()

    def _nnunet_epoch_end(self) -> None:
        """nnU-Net's on_epoch_end minus the per-epoch 30x54-inch progress plot (costly on CPU)."""
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != self.num_epochs - 1:
            self.save_checkpoint(f"{self.output_folder}/checkpoint_latest.pth")
        ema = self.logger.get_value("ema_fg_dice", step=-1)
        if self._best_ema is None or ema > self._best_ema:
            self._best_ema = ema
            self.save_checkpoint(f"{self.output_folder}/checkpoint_best.pth")
        self.current_epoch += 1

    # ---- held-out evaluation -------------------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False) -> dict[str, Any]:
        """Sliding-window evaluation of this fold's validation cases (see :mod:`training.holdout`)."""
        _, val_keys = self.do_split()
        self.require_previous_stage(list(val_keys))
        self.set_deep_supervision_enabled(False)
        try:
            scored = {k: v for k, v in self.subtypes.items() if self.classifies(k)}
            metrics = evaluate_preprocessed(self._plain_network(), self.plans_manager.plans, self.configuration_name,
                                            self.preprocessed_dataset_folder, val_keys, scored,
                                            device=self.device, sources=self.sources,
                                            previous_stage=self.folder_with_segs_from_previous_stage,
                                            foreground_labels=self.label_manager.foreground_labels,
                                            on_logits=self._export_next_stages
                                            if self.configuration_manager.next_stage_names else None)
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
        s = metrics["summary"]
        s["held_out"] = self.fold != "all"  # nnU-Net's fold 'all' "validates" on its own training cases
        with open(f"{self.output_folder}/validation_metrics.json", "w") as f:
            json.dump(metrics, f, indent=1)
        logger.info("fold %s %s (%d cases): whole DSC %.3f  lesion DSC %.3f  macro-F1 %.3f", self.fold,
                    "held-out" if s["held_out"] else "training cases (fold all: none held out)",
                    s["n_cases"], s["dice_whole"], s["dice_lesion"], s["macro_f1"])
        return metrics

    def _export_next_stages(self, key: str, logits: torch.Tensor, properties: dict[str, Any]) -> None:
        """nnU-Net's next-stage export: ``logits`` resampled to each next stage's preprocessed grid, argmax."""
        for stage in self.configuration_manager.next_stage_names or []:
            manager = self.plans_manager.get_configuration(stage)
            folder = join(self.preprocessed_dataset_folder_base, manager.data_identifier)
            dataset_class = infer_dataset_class(folder)
            try:
                data, _, _, _ = dataset_class(folder, [key]).load_case(key)
            except FileNotFoundError:
                logger.warning("no preprocessed %s data for %s in %s; run `pancreas plan` for %s first", stage, key,
                               folder, stage)
                continue
            out = Path(self.output_folder_base) / "predicted_next_stage" / stage
            out.mkdir(parents=True, exist_ok=True)
            resample_and_save(logits.cpu(), data.shape[1:], str(out / key), self.plans_manager,
                              self.configuration_manager, properties, self.dataset_json, torch.get_num_threads(),
                              dataset_class)

    def _plain_network(self) -> MultiTaskUNet:
        mod = self.network.module if self.is_ddp else self.network
        return getattr(mod, "_orig_mod", mod)


class MultiTaskTrainerDA5(MultiTaskTrainer, nnUNetTrainerDA5):
    """The multi-task trainer with nnU-Net's heavier DA5 augmentation (its transform hooks)."""


#: the names nnU-Net's ``-tr`` option can find (external trainer mechanism)
nnUNetTrainerMultiTask = MultiTaskTrainer
nnUNetTrainerMultiTaskDA5 = MultiTaskTrainerDA5

TRAINERS: dict[bool, type[MultiTaskTrainer]] = {False: MultiTaskTrainer, True: MultiTaskTrainerDA5}


def trainer_class(options: TrainOptions) -> type[MultiTaskTrainer]:
    return TRAINERS[options.da5]


def with_head(options: TrainOptions, variant: str) -> TrainOptions:
    return replace(options, head=options.head.model_copy(update={"variant": variant}))
