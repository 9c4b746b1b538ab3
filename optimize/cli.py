"""Optimize a model bundle: chained recipes write a new, servable bundle.

Recipes (comma-separated, applied in order): onnx, fp16, int8[:minmax|entropy|percentile], prune:RATIO,
distill:width=F[:convs=N][:init=teacher|random], tensorrt[:fp32|fp16|int8], compile[:aoti].
Example: pancreas optimize pancreas/demo_bundle --recipe prune:0.3,onnx,int8 --out work_dirs/opt_int8
Calibration, parity and fine-tuning use real preprocessed phantom patches (--data, a quiz-layout folder
with train/ and validation/; phantoms are synthesized when it is omitted). With --finetune-dataset,
prune/distill fine-tune through the training package (nnU-Net's loop, teacher as distillation target) on
that preprocessed nnU-Net dataset, e.g. --finetune-dataset 501 --finetune-workdir runs/demo/work
--finetune-plans nnUNetPlansTiny --epochs 100 --lr 2e-3 --kd-temperature 1 (the measured demo recipe).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from optimize.distill import DistillConfig, NnUNetFinetune
from optimize.options import CompileConfig, OptimizeOptions
from optimize.quantize import Int8Config
from pancreas.backends.tensorrt_build import TrtBuildConfig


def _default(config: type, name: str) -> Any:
    """The declared default of field ``name`` of the dataclass ``config`` (each flag default lives there)."""
    found = next(f for f in fields(config) if f.name == name)
    return found.default_factory() if found.default is MISSING else found.default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    opt, kd, nnu = OptimizeOptions, DistillConfig, NnUNetFinetune
    parser.add_argument("bundle", type=Path, help="model bundle folder to optimize")
    parser.add_argument("--recipe", required=True, help="comma-separated recipes (onnx, fp16, bf16, int8, prune:R, distill:..., tensorrt, compile), e.g. "
                        "onnx,int8, prune:0.3,onnx or onnx,bf16 (torch bf16 autocast, served where it measured faster)")
    parser.add_argument("--out", type=Path, required=True, help="output bundle folder (must be new or empty)")
    parser.add_argument("--data", type=Path, default=_default(opt, "data"),
                        help="quiz-layout phantom folder (train/, validation/)")
    parser.add_argument("--fold", default=_default(opt, "fold"),
                        help="which fold's weights to optimize (default: the first; all: every fold, merged)")
    parser.add_argument("--calib-cases", type=int, default=_default(opt, "calib_cases"),
                        help="training cases for INT8 calibration")
    parser.add_argument("--calib-per-case", type=int, default=_default(opt, "calib_per_case"),
                        help="calibration patches per case")
    parser.add_argument("--val-cases", type=int, default=_default(opt, "val_cases"),
                        help="validation cases for parity and accuracy")
    parser.add_argument("--train-cases", type=int, default=_default(opt, "train_cases"),
                        help="training cases for prune/distill fine-tuning")
    parser.add_argument("--train-per-case", type=int, default=_default(opt, "train_per_case"),
                        help="fine-tuning patches per case")
    parser.add_argument("--steps", type=int, default=_default(kd, "steps"), help="fine-tune steps after prune/distill")
    parser.add_argument("--lr", type=float, default=_default(kd, "lr"), help="fine-tune learning rate")
    parser.add_argument("--kd-alpha", type=float, default=_default(kd, "alpha"),
                        help="weight of the teacher (distillation) term")
    parser.add_argument("--kd-temperature", type=float, default=_default(kd, "temperature"),
                        help="distillation temperature T")
    nn = parser.add_argument_group("fine-tuning with nnU-Net's loop (training package)")
    nn.add_argument("--finetune-dataset", default=None,
                    help="preprocessed nnU-Net dataset (id or name) planned like the bundle; replaces the patch loop")
    nn.add_argument("--finetune-workdir", type=Path, default=_default(nnu, "workdir"),
                    help="its work root (%(default)s)")
    nn.add_argument("--finetune-plans", default=_default(nnu, "plans"), help="its plans identifier (%(default)s)")
    nn.add_argument("--finetune-fold", default=_default(nnu, "fold"), help="fold (0-4) or quiz (%(default)s)")
    nn.add_argument("--epochs", type=int, default=_default(nnu, "epochs"), help="fine-tune epochs (%(default)s)")
    nn.add_argument("--iters-per-epoch", type=int, default=_default(nnu, "iters_per_epoch"),
                    help="iterations per epoch (%(default)s)")
    nn.add_argument("--device", choices=("cpu", "cuda"), default=_default(nnu, "device"),
                    help="fine-tune device (%(default)s)")
    nn.add_argument("--threads", type=int, default=_default(nnu, "threads"),
                    help="torch CPU threads while fine-tuning")
    parser.add_argument("--calibration", default=",".join(_default(Int8Config, "methods")),
                        help="INT8 calibration methods to try (best agreement with fp32 wins)")
    parser.add_argument("--trt-max-batch", type=int, default=_default(TrtBuildConfig, "max_batch"),
                        help="TensorRT profile: batch 1..N")
    parser.add_argument("--compile-device", default=_default(CompileConfig, "device"),
                        help="device compile:aoti builds its package for: auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=_default(opt, "seed"))


def run(args: argparse.Namespace) -> int:
    from optimize.recipes import optimize_bundle, optimize_folds  # imports torch: kept out of --help

    fold = int(args.fold) if args.fold is not None and str(args.fold).isdigit() else args.fold
    nnunet = None
    if args.finetune_dataset is not None:
        nnunet = NnUNetFinetune(dataset=args.finetune_dataset, workdir=args.finetune_workdir,
                                plans=args.finetune_plans, fold=args.finetune_fold, epochs=args.epochs,
                                iters_per_epoch=args.iters_per_epoch, lr=args.lr, device=args.device,
                                threads=args.threads)
    options = OptimizeOptions(
        data=args.data, fold=fold, seed=args.seed, calib_cases=args.calib_cases, calib_per_case=args.calib_per_case,
        val_cases=args.val_cases, train_cases=args.train_cases, train_per_case=args.train_per_case,
        finetune=DistillConfig(steps=args.steps, lr=args.lr, seed=args.seed, alpha=args.kd_alpha,
                               temperature=args.kd_temperature), nnunet=nnunet,
        int8=Int8Config(methods=tuple(m.strip() for m in args.calibration.split(",") if m.strip())),
        trt=TrtBuildConfig(max_batch=args.trt_max_batch), compile=CompileConfig(device=args.compile_device),
        command=" ".join(["pancreas", *sys.argv[1:]]))
    run_recipes = optimize_folds if fold == "all" else optimize_bundle
    bundle = run_recipes(args.bundle, args.recipe, args.out, options=options)
    rows = [{"recipe": r["recipe"], "precision": r["precision"], "artifact": r["artifact"],
             "parity_agreement": (r.get("parity") or {}).get("agreement"),
             "accuracy_delta": r["accuracy"]["delta"], "latency_ms_per_patch": r["latency_ms_per_patch"]}
            for r in bundle.metadata.optimization]
    print(json.dumps({"bundle": str(bundle.root), "stages": rows}, indent=2))
    return 0
