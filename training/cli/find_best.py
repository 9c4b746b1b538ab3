"""Choose the best configuration or ensemble of configurations by out-of-fold scores, like
``nnUNetv2_find_best_configuration``: each configuration's fold bundle predicts its held-out cases through the
engine, every pair and all configurations together are averaged in memory, all are scored per source (whole/lesion
DSC, NSD@2 mm, HD95, subtype macro-F1) and the best by mean whole+lesion DSC (real cases when present, else all) is
written as a bundle (a copy, or an ensemble bundle of the chosen members).
Example: ``pancreas find-best --dataset 503 --workdir runs/mix --model 3d_fullres=runs/b3d --model 2d=runs/b2d
--out runs/best``"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", action="append", required=True, metavar="NAME=BUNDLE",
                        help="a configuration's fold bundle (exported with the folds of the splits); repeat per "
                             "configuration; NAME defaults to the bundle's folder name")
    parser.add_argument("--dataset", required=True, help="dataset id or name the folds were trained on")
    parser.add_argument("--workdir", type=Path, default=Path("work_dirs"), help="nnU-Net work root (%(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="folder for find_best.{json,md} and best/")
    parser.add_argument("--no-ensembles", action="store_true", help="score single configurations only")
    parser.add_argument("--scored-sources", default=None,
                        help="comma-separated sources whose subtype is scored (those that trained the classifier)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import json
    import logging

    from pancreas.engine import EngineConfig
    from training.find_best import find_best, parse_models
    from training.nnunet_env import configure, resolve_dataset
    from training.subtypes import read_sources, read_subtypes

    paths = configure(args.workdir)
    name = resolve_dataset(args.dataset, paths)
    splits = json.loads((paths.preprocessed / name / "splits_final.json").read_text())
    raw = paths.raw / name
    scored = tuple(s for s in args.scored_sources.split(",") if s) if args.scored_sources else None
    result = find_best(parse_models(args.model), raw, splits, out=args.out, subtypes=read_subtypes(raw),
                       sources=read_sources(raw), scored_sources=scored, ensembles=not args.no_ensembles,
                       config=EngineConfig(backend="torch", device="cpu", num_threads=args.threads))
    print(result.markdown())
    logging.getLogger(__name__).info("written: %s", result.files)
    return 0
