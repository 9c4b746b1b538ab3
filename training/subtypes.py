"""The subtype table and the quiz split hint written next to an nnU-Net raw dataset.

* ``subtypes.csv``: ``case_id,subtype,split,source`` (split is ``train``, ``validation`` or ``test``;
  source is ``real`` or ``phantom``, see :mod:`pancreas.sources`), one row per case with a known subtype. Tables
  written before the source column existed read as source ``unknown``.
* ``quiz_splits.json``: ``{"train": [...], "validation": [...]}``, written when the quiz had a
  validation split, so training can use it as an extra fold next to nnU-Net's own 5-fold CV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nnunetv2.utilities.crossval_split import generate_crossval_split

from pancreas.errors import DatasetError
from pancreas.quiz import SPLITS, read_subtype_csv
from pancreas.sources import UNKNOWN

SUBTYPES_FILE = "subtypes.csv"
SPLITS_FILE = "quiz_splits.json"


@dataclass(frozen=True)
class SubtypeRow:
    """One row of ``subtypes.csv``."""

    case_id: str
    subtype: int
    split: str
    source: str = UNKNOWN


def write_subtypes(dataset_dir: str | Path, rows: Iterable[SubtypeRow]) -> Path:
    """Write ``subtypes.csv`` sorted by split then case id."""
    path = Path(dataset_dir) / SUBTYPES_FILE
    ordered = sorted(rows, key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else 99, r.case_id))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "subtype", "split", "source"])
        writer.writerows([r.case_id, r.subtype, r.split, r.source] for r in ordered)
    return path


def read_subtype_rows(dataset_dir: str | Path) -> list[SubtypeRow]:
    """All rows of a dataset's ``subtypes.csv`` (split defaults to ``train``, source to ``unknown``)."""
    path = Path(dataset_dir) / SUBTYPES_FILE
    subtypes = read_subtype_csv(path)  # validates columns and values
    with path.open(newline="") as fh:
        rows = {row.get("case_id", ""): row for row in csv.DictReader(fh)}
    return [SubtypeRow(case, sub, rows.get(case, {}).get("split") or "train",
                       rows.get(case, {}).get("source") or UNKNOWN) for case, sub in subtypes.items()]


def read_subtypes(dataset_dir: str | Path, *, splits: Iterable[str] | None = None) -> dict[str, int]:
    """``{case_id: subtype}`` from a converted dataset, optionally restricted to some splits."""
    keep = None if splits is None else set(splits)
    return {r.case_id: r.subtype for r in read_subtype_rows(dataset_dir) if keep is None or r.split in keep}


def read_sources(dataset_dir: str | Path) -> dict[str, str]:
    """``{case_id: source}`` of the cases in a dataset's ``subtypes.csv``."""
    return {r.case_id: r.source for r in read_subtype_rows(dataset_dir)}


def source_counts(sources: Mapping[str, str]) -> dict[str, int]:
    """Number of cases per source, e.g. ``{"phantom": 45, "real": 60}``."""
    counts: dict[str, int] = {}
    for source in sources.values():
        counts[source] = counts.get(source, 0) + 1
    return dict(sorted(counts.items()))


def stratified_splits(sources: Mapping[str, str], n_splits: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """nnU-Net's seeded k-fold split run per source and merged fold by fold.

    Each fold validates on the same share of every source, and the cases of one source are split exactly
    as nnU-Net would split a dataset of that source alone (so real-only and real+phantom runs share folds).
    """
    by_source: dict[str, list[str]] = {}
    for case in sorted(sources):
        by_source.setdefault(sources[case], []).append(case)
    small = {s: len(c) for s, c in by_source.items() if len(c) < n_splits}
    if small:
        raise DatasetError(f"cannot split {small} case(s) of source(s) {sorted(small)} into {n_splits} folds; "
                           "add cases or use fewer folds")
    folds: list[dict[str, list[str]]] = [{"train": [], "val": []} for _ in range(n_splits)]
    for cases in by_source.values():
        for fold, part in zip(folds, generate_crossval_split(cases, seed=seed, n_splits=n_splits)):
            fold["train"] += [str(c) for c in part["train"]]
            fold["val"] += [str(c) for c in part["val"]]
    return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in folds]


def write_quiz_splits(dataset_dir: str | Path, train: list[str], validation: list[str]) -> Path:
    path = Path(dataset_dir) / SPLITS_FILE
    path.write_text(json.dumps({"train": sorted(train), "validation": sorted(validation)}, indent=2) + "\n")
    return path


def read_quiz_splits(dataset_dir: str | Path) -> dict[str, list[str]] | None:
    """The quiz's own ``{"train": [...], "validation": [...]}`` split, or ``None`` if there was none."""
    path = Path(dataset_dir) / SPLITS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not {"train", "validation"} <= set(data):
        raise DatasetError(
            f"{path}: expected keys 'train' and 'validation'; re-run pancreas convert", code="bad_splits"
        )
    return {"train": list(data["train"]), "validation": list(data["validation"])}
