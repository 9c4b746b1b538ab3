"""Write a model bundle (weights per fold, plans, dataset.json, network/head config, label map, CV metrics,
provenance) from a training output. Example: ``pancreas export-bundle --dataset 501 --config 3d_fullres
--folds 0,1,2,3,4 --plans nnUNetPlansTiny --out bundles/phantoms``"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pancreas.cli.inference_options import OPTIONS, add_inference_options, inference_overrides
from pancreas.errors import PancreasError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset id (501) or name")
    parser.add_argument("--config", default="3d_fullres", help="nnU-Net configuration (%(default)s)")
    parser.add_argument("--folds", default="0",
                        help="comma-separated folds, e.g. 0,1,2,3,4, quiz or full (nnU-Net's fold_all) (%(default)s)")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier, e.g. nnUNetPlansTiny")
    parser.add_argument("--checkpoint", choices=("final", "best"), default="final")
    parser.add_argument("--da5", action="store_true", help="the folds were trained with --da5")
    parser.add_argument("--trainer", default=None,
                        help="trainer folder name, e.g. MultiTaskTrainer_baseline for an ablation row")
    parser.add_argument("--name", default=None, help="bundle name (default: DATASET-CONFIG)")
    parser.add_argument("--description", default="")
    parser.add_argument("--metrics", type=Path, default=None, help="JSON file of extra metrics to record")
    add_inference_options(parser, record=True)
    parser.add_argument("--min-component-fraction", type=float, default=None, metavar="F",
                        help="record post-processing that also keeps the pancreas of every component of at least F "
                             "times the largest one's size (metadata.inference.postprocessing; default: the "
                             "largest component only)")
    parser.add_argument("--max-piece-distance-mm", type=float, default=None, metavar="MM",
                        help="with --min-component-fraction: keep a piece only within MM of the largest component "
                             "(metadata.inference.postprocessing; pieces are also capped at the plausible pancreas "
                             "volume of the training domain)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder (replaced if it exists)")
    parser.add_argument("--evaluate-on", type=Path, default=None, metavar="QUIZ_SPLIT_DIR",
                        help="labelled phantom split (e.g. phantoms/validation): run pancreas predict + evaluate "
                             "on it and record phantom_* metrics in the bundle")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for --evaluate-on")
    parser.add_argument("--licence-note", default=None,
                        help="where the training data came from and its licence, recorded in training_data")
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs"))


def recorded_inference(args: argparse.Namespace) -> dict[str, object]:
    """The inference defaults ``--tta`` / ``--class-weights`` / ``--scales`` / ``--mirror-axes`` / ``--min-component-fraction`` /
    ``--max-piece-distance-mm`` record in ``metadata.inference`` (checked as the engine will read them)."""
    from pancreas.postprocess import PostprocessConfig

    recorded: dict[str, object] = {"tta": True} if args.tta else {}
    recorded.update({k: list(v) for k, v in inference_overrides(args, tuple(OPTIONS)).items() if v is not None})
    if args.max_piece_distance_mm is not None and args.min_component_fraction is None:
        raise PancreasError("--max-piece-distance-mm needs --min-component-fraction (it limits the kept pieces)")
    if args.min_component_fraction is not None:
        recorded["postprocessing"] = {"min_component_fraction": args.min_component_fraction}
        if args.max_piece_distance_mm is not None:
            recorded["postprocessing"]["max_piece_distance_mm"] = args.max_piece_distance_mm
        PostprocessConfig.from_metadata(recorded)
    return recorded


def run(args: argparse.Namespace) -> int:
    from training.cli.train import nnunet_fold
    from training.export import bundle_size_mb, export_bundle
    from training.nnunet_env import configure

    configure(args.workdir)
    folds = [nnunet_fold(f) for f in args.folds.split(",") if f]
    extra = json.loads(args.metrics.read_text()) if args.metrics else None
    bundle = export_bundle(args.dataset, configuration=args.config, folds=folds, plans_identifier=args.plans,
                           out=args.out, da5=args.da5, checkpoint=args.checkpoint, name=args.name, trainer_name=args.trainer,
                           description=args.description, metrics=extra, inference=recorded_inference(args),
                           **({"licence_note": args.licence_note} if args.licence_note else {}))
    if args.evaluate_on:
        import tempfile

        from training.export import phantom_metrics, record_metrics

        with tempfile.TemporaryDirectory() as tmp:
            measured = phantom_metrics(bundle.root, args.evaluate_on, tmp, threads=args.threads)
        bundle = record_metrics(bundle.root, measured)
        print(json.dumps({k: v for k, v in measured.items() if k.startswith("phantom_") and k != "phantom_per_case"},
                         indent=1))
    print(f"bundle {bundle.root}: {len(bundle.metadata.artifacts)} artifact(s), {bundle_size_mb(bundle.root):.1f} MB, "
          f"head {bundle.metadata.network.head.variant}")
    return 0
