"""Write synthetic abdominal CT phantoms (image + mask 0/1/2 + subtype) in the pancreas-quiz layout.

Example: ``pancreas synth phantoms --cases-per-subtype 4 --shape crop --seed 0 --preview``
(``--profile quiz`` draws volumes, HU, spacings and extents measured on the real quiz data;
``--shapes DIR`` takes each case's pancreas and lesion shape from a real mask of its subtype in DIR).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (quiz layout)")
    parser.add_argument("--cases-per-subtype", type=int, default=4, help="cases per subtype and split (4)")
    parser.add_argument("--splits", default="train,validation,test",
                        help="comma-separated subset of train,validation,test (all)")
    parser.add_argument("--shape", choices=("crop", "full"), default="crop",
                        help="crop: quiz-like ROI around the pancreas; full: whole 512x512 abdominal CT")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same seed -> identical files (0)")
    parser.add_argument("--headers", choices=("varied", "canonical"), default="varied",
                        help="varied: scanner-like directions and dtypes; canonical: LPS identity, int16")
    parser.add_argument("--profile", default="classic",
                        help="sampling profile: classic (the default, as the demo model was trained on) or quiz "
                             "(distributions measured on the real quiz data, see pancreas/phantoms/calibration.py)")
    parser.add_argument("--shapes", type=Path, default=None, metavar="DIR",
                        help="take the pancreas and lesion shapes from real label masks DIR/quiz_{subtype}_{NNN}"
                             ".nii.gz (0 background, 1 pancreas, 2 lesion): each case uses one mask of its "
                             "subtype, drawn by the seed, painted and rendered with the phantom's look; every "
                             "subtype needs a mask (off: the drawn tube gland and ellipsoid lesion)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (1)")
    parser.add_argument("--preview", action="store_true", help="also write OUT/preview.png")


def run(args: argparse.Namespace) -> int:
    from pancreas.phantoms import SynthConfig, synthesize
    from pancreas.phantoms.shapes import ShapeSource

    shapes = ShapeSource.scan(args.shapes) if args.shapes is not None else None
    config = SynthConfig(cases_per_subtype=args.cases_per_subtype,
                         splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
                         shape=args.shape, seed=args.seed, headers=args.headers, preview=args.preview,
                         workers=args.workers, profile=args.profile, shapes=shapes)
    start = time.perf_counter()
    out = synthesize(args.out, config)
    n = config.cases_per_subtype * 3 * len(config.splits)
    print(f"wrote {n} {config.shape} phantoms ({config.profile} profile) to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    if config.preview:
        print(f"preview: {out / 'preview.png'}")
    return 0
