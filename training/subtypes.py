"""The subtype table and the quiz split hint written next to an nnU-Net raw dataset.

* ``subtypes.csv``: ``case_id,subtype,split`` (split is ``train``, ``validation`` or ``test``), one row
  per case with a known subtype.
* ``quiz_splits.json``: ``{"train": [...], "validation": [...]}``, written when the quiz had a
  validation split, so training can use it as an extra fold next to nnU-Net's own 5-fold CV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pancreas.errors import DatasetError
from pancreas.evaluation import read_subtype_csv

SUBTYPES_FILE = "subtypes.csv"
SPLITS_FILE = "quiz_splits.json"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SubtypeRow:
    """One row of ``subtypes.csv``."""

    case_id: str
    subtype: int
    split: str


def write_subtypes(dataset_dir: str | Path, rows: Iterable[SubtypeRow]) -> Path:
    """Write ``subtypes.csv`` sorted by split then case id."""
    path = Path(dataset_dir) / SUBTYPES_FILE
    ordered = sorted(rows, key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else 99, r.case_id))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "subtype", "split"])
        writer.writerows([r.case_id, r.subtype, r.split] for r in ordered)
    return path


def read_subtype_rows(dataset_dir: str | Path) -> list[SubtypeRow]:
    """All rows of a dataset's ``subtypes.csv`` (the split defaults to ``train`` if the column is absent)."""
    path = Path(dataset_dir) / SUBTYPES_FILE
    subtypes = read_subtype_csv(path)  # validates columns and values
    with path.open(newline="") as fh:
        splits = {row.get("case_id", ""): row.get("split") or "train" for row in csv.DictReader(fh)}
    return [SubtypeRow(case, sub, splits.get(case, "train")) for case, sub in subtypes.items()]


def read_subtypes(dataset_dir: str | Path, *, splits: Iterable[str] | None = None) -> dict[str, int]:
    """``{case_id: subtype}`` from a converted dataset, optionally restricted to some splits."""
    keep = None if splits is None else set(splits)
    return {r.case_id: r.subtype for r in read_subtype_rows(dataset_dir) if keep is None or r.split in keep}


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
