"""Convert a quiz-layout folder (or an nnU-Net raw dataset plus a subtype CSV) into a canonicalized
nnU-Net v2 raw dataset at WORKDIR/nnUNet_raw/Dataset{ID}_{NAME}/ with subtypes.csv."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        type=Path,
        nargs="+",
        metavar="QUIZ_DIR",
        help="quiz folder ({train,validation}/subtype{k}/...) or an nnU-Net raw dataset folder; several quiz "
        "folders (e.g. real cases and `pancreas synth` phantoms) are merged, each case keeping its source",
    )
    parser.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id (1..999), e.g. 501")
    parser.add_argument("--name", default="PancreasQuiz", help="dataset name (default: %(default)s)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("work_dirs"),
        help="work root holding nnUNet_raw/ (default: %(default)s)",
    )
    parser.add_argument(
        "--subtypes",
        type=Path,
        default=None,
        help="subtype CSV (case_id,subtype or Names,Subtype); required for an nnU-Net raw input",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    parser.add_argument("--workers", type=int, default=2, help="parallel NIfTI readers/writers (default: 2)")


def run(args: argparse.Namespace) -> int:
    from training.convert import convert
    from training.subtypes import read_quiz_splits, read_subtype_rows

    out = convert(
        args.source,
        dataset_id=args.dataset_id,
        name=args.name,
        workdir=args.workdir,
        subtypes_csv=args.subtypes,
        overwrite=args.overwrite,
        num_workers=args.workers,
    )
    rows = read_subtype_rows(out)
    print(f"dataset: {out}")
    print(
        f"training cases: {len(list((out / 'labelsTr').glob('*.nii.gz')))}  "
        f"test images: {len(list((out / 'imagesTs').glob('*.nii.gz')))}"
    )
    sources = Counter(r.source for r in rows if r.split != "test")
    print("  sources     " + ", ".join(f"{k}: {n}" for k, n in sorted(sources.items())))
    for split, counts in sorted(
        {s: Counter(r.subtype for r in rows if r.split == s) for s in {r.split for r in rows}}.items()
    ):
        print(f"  {split:<11} subtypes " + ", ".join(f"{k}: {counts[k]}" for k in sorted(counts)))
    if read_quiz_splits(out) is not None:
        print(f"quiz train/validation split: {out / 'quiz_splits.json'}")
    return 0
