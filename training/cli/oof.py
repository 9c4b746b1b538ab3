"""Out-of-fold cross-validation of a fold-ensemble bundle on each case's original grid: every fold model
predicts the cases its fold held out, through the same engine as ``pancreas predict``; whole/lesion DSC,
NSD@2 mm and HD95 per case and per source (real / phantom), subtype recall or macro-F1.
Example: ``pancreas oof runs/bundle --dataset 503 --workdir runs/mix --out runs/oof --scored-sources phantom``"""

from __future__ import annotations

import argparse
from pathlib import Path

from pancreas.cli.inference_options import add_inference_options, inference_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle exported with --folds 0,1,2,3,4")
    add_held_out_arguments(parser, out_help="folder for masks/, oof.{json,md,png}")
    parser.add_argument("--record", action="store_true",
                        help="record the {source}_oof_* means in the bundle's metadata.metrics")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the cases OUT/oof.json already scored with the same fold weights and settings "
                             "(an interrupted run, or a bundle re-exported with more folds)")


def add_held_out_arguments(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    """The flags of every out-of-fold command (``oof``, ``find-best``): dataset, workdir, out, scored sources,
    threads, TTA, class weights and scales."""
    parser.add_argument("--dataset", required=True, help="dataset id or name the folds were trained on")
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs"), help="nnU-Net work root (%(default)s)")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--scored-sources", default=None,
                        help="comma-separated sources whose subtype is scored (those that trained the classifier)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_inference_options(parser)


def engine_config(args: argparse.Namespace):
    """The engine every out-of-fold command scores with: torch on CPU, plus the TTA/class-weight/scale/mirror-axes
    overrides."""
    from pancreas.engine_config import EngineConfig

    return EngineConfig(backend="torch", device="cpu", num_threads=args.threads, **inference_overrides(args))


def scored_sources(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(s for s in args.scored_sources.split(",") if s) if args.scored_sources else None


def run(args: argparse.Namespace) -> int:
    from training.oof import held_out_data, out_of_fold

    data = held_out_data(args.dataset, args.workdir)
    report = out_of_fold(args.bundle, data.raw, data.splits, out=args.out, subtypes=data.subtypes,
                         sources=data.sources, scored_sources=scored_sources(args),
                         config=engine_config(args), resume=args.resume)
    if args.record:
        from training.export import record_metrics

        record_metrics(args.bundle, {**report.bundle_metrics(),
                                     "oof_measured_with": "pancreas oof (torch, cpu, each fold on its held-out cases, "
                                                          "original grid, postprocessing as recorded; TTA "
                                                          f"{_setting(args.tta)}, class weights "
                                                          f"{_setting(args.class_weights)}, scales "
                                                          f"{_setting(args.scales)}, mirror axes "
                                                          f"{_setting(args.mirror_axes)})"})
    print(report.markdown().split("\n\n| case")[0])
    print(f"written: {report.files}")
    return 0


def _setting(value: object) -> str:
    return "as the bundle records" if value is None else str(value)
