"""Train the multi-task network with nnU-Net v2 (one fold, the quiz split, or 5-fold CV).
Example: ``pancreas train 501 --config 3d_fullres --fold 0 --plans nnUNetPlansTiny --epochs 20
--iters-per-epoch 25 --variant mask --device cpu``. ``--fold all`` runs the 5 folds of nnU-Net's split and
writes the CV summary (JSON, markdown, PNG); ``--fold quiz`` trains on the quiz train split and validates
on its validation split; ``--fold full`` is nnU-Net's fold ``all``: every case trains (``fold_all``), so
nothing is held out (the final model of a recipe whose folds were validated)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.precision import TRAINING_PRECISIONS

HEADS = ("gap", "multiscale", "attention", "mask")
#: CLI word for nnU-Net's fold ``all`` (train on every case); ``--fold all`` here means 5-fold CV.
FULL_FOLD = "full"


def nnunet_fold(text: str) -> int | str:
    """The nnU-Net fold a CLI fold names: ``0``-``4`` -> int, ``full`` -> ``"all"``, others unchanged."""
    if text.isdigit():
        return int(text)
    return "all" if text == FULL_FOLD else text


def _weights(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _source_weights(text: str) -> dict[str, float]:
    try:
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SOURCE=WEIGHT[,SOURCE=WEIGHT], "
                                         "e.g. phantom=0.25") from exc


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``ablate``."""
    parser.add_argument("dataset", metavar="DATASET", help="dataset id (501), name or raw dataset folder")
    parser.add_argument("--config", default="3d_fullres", help="nnU-Net configuration (%(default)s)")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier, e.g. nnUNetPlansTiny")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--iters-per-epoch", type=int, default=50)
    parser.add_argument("--val-iters", type=int, default=5)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="sgd: nnU-Net's (momentum 0.99); adamw: far fewer steps needed (CPU budgets)")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial learning rate (then warm-up + PolyLR)")
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--cls-weight", type=float, default=0.5, help="lambda of the classification loss")
    parser.add_argument("--weighting", choices=("fixed", "learned"), default="fixed")
    parser.add_argument("--focal", type=float, default=0.0, help="focal gamma of the classification loss (0: off)")
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--seg-focal", type=float, default=0.0, help="focal gamma of the segmentation CE (0: off)")
    parser.add_argument("--seg-class-weights", type=_weights, default=None, metavar="BG,PANC,LES")
    parser.add_argument("--lesion-oversample", type=float, default=0.5,
                        help="probability that a foreground patch is centred on the lesion")
    parser.add_argument("--oversample-foreground", type=float, default=0.5)
    parser.add_argument("--da5", action="store_true", help="nnU-Net's DA5 augmentation")
    parser.add_argument("--precision", choices=TRAINING_PRECISIONS, default="fp32",
                        help="CPU training arithmetic: fp32, or bf16 autocast (faster on CPUs with AVX512-BF16 or "
                             "AMX); CUDA always uses nnU-Net's fp16 autocast (default: %(default)s)")
    parser.add_argument("--cls-sources", default=None, metavar="SOURCES",
                        help="comma-separated case sources that train the classifier, e.g. phantom (default: all); "
                             "the others still train the segmentation")
    parser.add_argument("--source-weights", type=_source_weights, default=None, metavar="SOURCE=W,...",
                        help="relative draw weight of each case source's training cases, e.g. phantom=0.25 "
                             "(default: every case equally likely; unlisted sources weigh 1)")
    parser.add_argument("--pretrained-weights", default=None, metavar="CHECKPOINT",
                        help="nnU-Net checkpoint to start from, e.g. a phantom-trained fold's checkpoint_final.pth "
                             "(same plans and head; the segmentation layers are not transferred)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="data-augmentation processes (0: in-process)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_options(parser)
    parser.add_argument("--fold", default="0", help="0-4, all (5-fold CV), quiz (quiz train/validation split) or "
                        f"{FULL_FOLD} (nnU-Net's fold 'all': every case trains, none held out)")
    parser.add_argument("--variant", choices=HEADS, default="mask", help="classification head")
    parser.add_argument("--out", type=Path, default=None, help="CV summary folder (default: results folder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted fold from its newest checkpoint (nnU-Net's --c; same options "
                             "required, checkpoints every 50 epochs)")


def options_from_args(args: argparse.Namespace, **overrides: object):
    """TrainOptions from the parsed shared options (``overrides`` win)."""
    from pancreas.bundle import HeadConfig
    from training.trainer import TrainOptions

    kw: dict[str, object] = {
        "head": HeadConfig(variant=getattr(args, "variant", "mask")), "epochs": args.epochs,
        "iters_per_epoch": args.iters_per_epoch, "val_iters": args.val_iters, "initial_lr": args.lr,
        "optimizer": args.optimizer, "warmup_epochs": args.warmup_epochs, "cls_weight": args.cls_weight,
        "weighting": args.weighting, "cls_focal_gamma": args.focal, "label_smoothing": args.label_smoothing,
        "seg_focal_gamma": args.seg_focal, "seg_class_weights": args.seg_class_weights,
        "lesion_oversample": args.lesion_oversample, "oversample_foreground": args.oversample_foreground,
        "da5": args.da5, "precision": args.precision, "num_workers": args.workers, "source_weights": args.source_weights,
        "pretrained_weights": args.pretrained_weights,
        "cls_sources": tuple(v for v in args.cls_sources.split(",") if v) if args.cls_sources else None}
    kw.update(overrides)
    return TrainOptions(**kw)


def run(args: argparse.Namespace) -> int:
    from training.nnunet_env import configure

    configure(args.workdir)
    options = options_from_args(args)
    common = {"configuration": args.config, "plans_identifier": args.plans, "options": options,
              "device": args.device, "threads": args.threads, "seed": args.seed}
    if args.fold == "all":
        from training.cv import run_cv

        summary = run_cv(args.dataset, out=args.out, resume=args.resume, **common)
        print(summary.markdown())
        print(f"CV summary: {summary.files}")
        return 0
    from training.runner import train_fold

    fold = nnunet_fold(args.fold)
    result = train_fold(args.dataset, fold=fold, resume=args.resume, **common)
    s = result.metrics.get("summary", {})
    print(f"fold {fold}: {result.output_folder}")
    if s:
        scope = "held-out" if s.get("held_out", True) else "training cases, not held out"
        print(f"{scope} ({s['n_cases']} cases): whole DSC {s['dice_whole']:.4f}  lesion DSC {s['dice_lesion']:.4f}  "
              f"macro-F1 {s['macro_f1']:.4f}")
    return 0
