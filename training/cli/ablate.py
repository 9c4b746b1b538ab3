"""Train head / loss-weighting / focal / DA5 / lesion-oversampling variants on the same budget and write
one comparison table (markdown + JSON). Example: ``pancreas ablate 501 --plans nnUNetPlansTiny --fold 0
--epochs 10 --iters-per-epoch 20 --variants baseline,head_gap,weighting_learned``"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli.train import add_training_options, options_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_options(parser)
    parser.add_argument("--fold", default="0", help="fold every variant trains on (0-4 or quiz)")
    parser.add_argument("--variant", default="mask", help="baseline classification head (%(default)s)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variants (default: baseline, 3 other heads, learned weighting, "
                             "focal, DA5, no lesion oversampling)")
    parser.add_argument("--out", type=Path, default=None, help="folder for ablation.{md,json}")


def run(args: argparse.Namespace) -> int:
    from training.ablate import DEFAULT_VARIANTS, markdown, run_ablation
    from training.nnunet_env import configure

    configure(args.workdir)
    variants = tuple(v for v in args.variants.split(",") if v) if args.variants else DEFAULT_VARIANTS
    fold: int | str = int(args.fold) if args.fold.isdigit() else args.fold
    rows, files = run_ablation(args.dataset, base=options_from_args(args), variants=variants,
                               configuration=args.config, plans_identifier=args.plans, fold=fold,
                               device=args.device, threads=args.threads, seed=args.seed, out=args.out)
    print(markdown(rows))
    print(f"written: {files}")
    return 0
