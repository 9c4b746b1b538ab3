"""Choose the best configuration or ensemble of configurations by out-of-fold scores, like
``nnUNetv2_find_best_configuration``: each configuration's fold bundle predicts its held-out cases through the
engine, every pair and all configurations together are averaged in memory, all are scored per source (whole/lesion
DSC, NSD@2 mm, HD95, subtype macro-F1) and the best by mean whole+lesion DSC (real cases when present, else all) is
written as a bundle (a copy, or an ensemble bundle of the chosen members).
Example: ``pancreas find-best --dataset 503 --workdir runs/mix --model 3d_fullres=runs/b3d --model 2d=runs/b2d
--out runs/best``"""

from __future__ import annotations

import argparse

from training.cli.oof import add_held_out_arguments, engine_config, scored_sources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", action="append", required=True, metavar="NAME=BUNDLE",
                        help="a configuration's fold bundle (exported with the folds of the splits); repeat per "
                             "configuration; NAME defaults to the bundle's folder name")
    add_held_out_arguments(parser, out_help="folder for find_best.{json,md} and best/")
    parser.add_argument("--no-ensembles", action="store_true", help="score single configurations only")


def run(args: argparse.Namespace) -> int:
    import logging

    from training.find_best import find_best, parse_models
    from training.oof import held_out_data

    data = held_out_data(args.dataset, args.workdir)
    result = find_best(parse_models(args.model), data.raw, data.splits, out=args.out, subtypes=data.subtypes,
                       sources=data.sources, scored_sources=scored_sources(args), ensembles=not args.no_ensembles,
                       config=engine_config(args))
    print(result.markdown())
    logging.getLogger(__name__).info("written: %s", result.files)
    return 0
