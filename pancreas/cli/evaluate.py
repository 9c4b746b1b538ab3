"""Score predicted masks (and optional subtype predictions) against ground truth: whole-pancreas and
lesion DSC, NSD@2mm and HD95 in mm, subtype macro-F1, accuracy and confusion matrix."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", type=Path, required=True, help="folder of predicted masks (CASE.nii.gz)")
    parser.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="reference masks: a quiz split folder (subtype{k}/...) or a flat folder",
    )
    parser.add_argument(
        "--pred-subtypes", type=Path, default=None, help="predicted subtypes (Names,Subtype CSV)"
    )
    parser.add_argument(
        "--gt-subtypes",
        type=Path,
        default=None,
        help="reference subtypes (default: subtype{k} folder names or GT/subtype_results.csv)",
    )
    parser.add_argument(
        "--tolerance-mm", type=float, default=2.0, help="NSD tolerance (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--per-case", type=Path, default=None, help="write the per-case CSV here")
    parser.add_argument("--workers", type=int, default=2, help="cases scored in parallel (default: 2)")


def run(args: argparse.Namespace) -> int:
    from pancreas.evaluation import evaluate_folders

    report = evaluate_folders(
        args.pred,
        args.gt,
        pred_subtypes=args.pred_subtypes,
        gt_subtypes=args.gt_subtypes,
        tolerance_mm=args.tolerance_mm,
        num_workers=args.workers,
    )
    print(report.table())
    if args.out is not None:
        report.to_json(args.out)
        print(f"report: {args.out}")
    if args.per_case is not None:
        report.write_per_case_csv(args.per_case)
        print(f"per-case: {args.per_case}")
    return 0
