"""Train one fold of the multi-task network (library entry point behind ``pancreas train``)."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pancreas.errors import DatasetError
from training.nnunet_env import current, resolve_dataset
from training.trainer import HISTORY_FILE, MultiTaskTrainer, TrainOptions, trainer_class

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldResult:
    fold: int | str
    output_folder: Path
    checkpoint: Path
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


def load_plans(dataset: str | int, plans_identifier: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(dataset name, plans, dataset.json) from the preprocessed folder."""
    paths = current()
    name = resolve_dataset(dataset, paths)
    plans_file = paths.preprocessed / name / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise DatasetError(f"{plans_file} is missing; run `pancreas plan {name}` (with --tiny for "
                           f"nnUNetPlansTiny) first")
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((paths.preprocessed / name / "dataset.json").read_text())
    return name, plans, dataset_json


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_trainer(dataset: str | int, *, configuration: str, fold: int | str, plans_identifier: str,
                 options: TrainOptions, device: str = "cpu", trainer_name: str | None = None,
                 trainer_cls: type[MultiTaskTrainer] | None = None) -> MultiTaskTrainer:
    """A configured (not yet initialized) trainer for one fold (``trainer_cls`` overrides the options' class).

    ``trainer_name`` names a subclass (nnU-Net derives the output folder from the trainer's class name), so
    ablation variants of one dataset/plans/fold do not overwrite each other.
    """
    name, plans, dataset_json = load_plans(dataset, plans_identifier)
    if configuration not in plans["configurations"]:
        raise DatasetError(f"plans {plans_identifier} of {name} have no configuration {configuration!r}; "
                           f"available: {sorted(plans['configurations'])}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DatasetError("--device cuda requested but torch.cuda.is_available() is false; use --device cpu")
    cls = trainer_cls or trainer_class(options)
    if trainer_name:
        cls = type(trainer_name, (cls,), {"__module__": cls.__module__})
    trainer = cls(plans, configuration, fold, dataset_json, torch.device(device))
    trainer.set_options(options)
    return trainer


def train_fold(dataset: str | int, *, configuration: str = "3d_fullres", fold: int | str = 0,
               plans_identifier: str = "nnUNetPlans", options: TrainOptions | None = None,
               device: str = "cpu", threads: int | None = None, seed: int = 12345,
               trainer_name: str | None = None, trainer_cls: type[MultiTaskTrainer] | None = None,
               setup: Callable[[MultiTaskTrainer], None] | None = None, resume: bool = False) -> FoldResult:
    """Train one fold with nnU-Net's loop, then evaluate its held-out cases.

    ``trainer_cls`` picks a trainer subclass; ``setup(trainer)`` runs before ``initialize()`` (e.g. to hand a
    :class:`training.distillation.DistillationTrainer` its teacher). ``resume`` continues an interrupted run of
    the same options from the fold's newest checkpoint (nnU-Net's ``--c``; see :func:`resume_training`).
    """
    options = options or TrainOptions()
    if threads:
        torch.set_num_threads(threads)
    # nnU-Net also reads this (e.g. its planner calls torch.set_num_threads with it): never 0
    os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, options.num_workers)))
    os.environ.setdefault("nnUNet_compile", "false" if device == "cpu" else "true")
    seed_everything(seed)
    trainer = make_trainer(dataset, configuration=configuration, fold=fold, plans_identifier=plans_identifier,
                           options=options, device=device, trainer_name=trainer_name, trainer_cls=trainer_cls)
    if setup is not None:
        setup(trainer)
    out = Path(trainer.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    resumed = resume and resume_training(trainer, out, options)
    (out / "train_options.json").write_text(json.dumps(options.to_json(), indent=1))
    (out / "network_config.json").write_text(trainer.network_config.model_dump_json(indent=1))
    logger.info("training fold %s of %s (%s, %s): %d epochs x %d iterations on %s", fold, trainer.plans_manager.dataset_name,
                configuration, plans_identifier, options.epochs, options.iters_per_epoch, device)
    if options.pretrained_weights and not resumed:
        load_pretrained(trainer, Path(options.pretrained_weights))
    trainer.run_training()
    metrics = trainer.perform_actual_validation() if options.evaluate else {}
    return FoldResult(fold, out, out / "checkpoint_final.pth", list(trainer.history), metrics)


#: checkpoints a resumed run starts from, newest first (nnU-Net's ``--c`` order)
RESUME_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth")
#: options that may change between an interrupted run and its resumption (they do not change what is learned)
RESUMABLE_CHANGES = frozenset({"num_workers", "evaluate", "save_every"})


def resume_training(trainer: MultiTaskTrainer, out: Path, options: TrainOptions) -> bool:
    """Load the newest checkpoint of an interrupted run into ``trainer``; False when there is none (fresh start).

    Refuses (DatasetError) when the run was made with other training options, or with learned loss weights
    (their values are not in nnU-Net's checkpoint). Network, optimizer, epoch and nnU-Net's log come back; the
    random streams do not, so a resumed run is not bit-identical to an uninterrupted one.
    """
    checkpoint = next((out / n for n in RESUME_CHECKPOINTS if (out / n).is_file()), None)
    if checkpoint is None:
        logger.warning("--resume: no checkpoint in %s, training from the start", out)
        return False
    saved_file = out / "train_options.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
    now = json.loads(json.dumps(options.to_json()))  # tuples as saved: lists
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if changed:
        raise DatasetError(f"cannot resume {out}: it was trained with other options ({', '.join(changed)}; see "
                           f"{saved_file}); rerun with the same options, or train into a fresh folder")
    if options.weighting == "learned":
        raise DatasetError(f"cannot resume {out}: learned loss weights are not saved in nnU-Net's checkpoints; "
                           "train it again from the start")
    trainer.load_checkpoint(str(checkpoint))
    history_file = out / HISTORY_FILE
    if history_file.is_file():
        epochs = json.loads(history_file.read_text()).get("epochs", [])
        trainer.history = [e for e in epochs if e["epoch"] < trainer.current_epoch]
    logger.info("resuming %s from %s at epoch %d of %d", out, checkpoint.name, trainer.current_epoch,
                options.epochs)
    return True


def load_pretrained(trainer: MultiTaskTrainer, checkpoint: Path) -> None:
    """Initialize ``trainer`` and start its network from ``checkpoint`` (nnU-Net's ``load_pretrained_weights``:
    every tensor but the segmentation layers); DatasetError when the file is missing or does not fit."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    if not checkpoint.is_file():
        raise DatasetError(f"pretrained weights {checkpoint} do not exist (expected an nnU-Net checkpoint_*.pth)")
    trainer.initialize()
    try:
        load_pretrained_weights(trainer.network, str(checkpoint))
    except (AssertionError, KeyError, RuntimeError) as exc:
        raise DatasetError(f"pretrained weights {checkpoint} do not fit this network ({exc}); pre-train with the "
                           "same plans (patch size, features, strides) and classification head") from exc
    logger.info("fold %s starts from the weights of %s", trainer.fold, checkpoint)


def fold_output_folder(dataset: str | int, *, configuration: str, fold: int | str, plans_identifier: str,
                       da5: bool = False, trainer_name: str | None = None) -> Path:
    """Where nnU-Net writes a fold (``nnUNet_results/DATASET/TRAINER__PLANS__CONFIG/fold_F``)."""
    paths = current()
    name = resolve_dataset(dataset, paths)
    trainer = trainer_name or ("MultiTaskTrainerDA5" if da5 else "MultiTaskTrainer")
    return paths.results / name / f"{trainer}__{plans_identifier}__{configuration}" / f"fold_{fold}"
