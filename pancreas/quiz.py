"""The pancreas-quiz layout, defined once: case ids, image/mask names, split folders and the subtype CSV.

A quiz folder holds ``{train,validation}/subtype{k}/quiz_{k}_{NNN}_0000.nii.gz`` (image) next to
``quiz_{k}_{NNN}.nii.gz`` (mask), and ``test/quiz_{NNN}_0000.nii.gz`` with optional
``test_labels/quiz_{NNN}.nii.gz`` plus ``test_labels/subtype_results.csv`` (``Names,Subtype``).
The ``_0000`` channel suffix is nnU-Net's, so an nnU-Net raw dataset (``imagesTr/{case}_0000.nii.gz``,
``labelsTr/{case}.nii.gz``) uses the same names. Importable without torch.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from pathlib import Path

from pancreas import SUBTYPES
from pancreas.errors import DatasetError

NII = ".nii.gz"
CHANNEL = "_0000"
SPLITS = ("train", "validation", "test")
TRAIN_SPLITS = ("train", "validation")
TEST_DIR, TEST_LABELS_DIR = "test", "test_labels"
SUBTYPE_CSV = "subtype_results.csv"
SUBTYPE_DIR = re.compile(r"^subtype(\d+)$")
#: ``quiz_{subtype}_{NNN}``: a train/validation case id (test ids are ``quiz_{NNN}``).
QUIZ_MASK = re.compile(r"^quiz_(\d+)_(\d+)$")
_SUFFIX = re.compile(r"\.nii(\.gz)?$")
_ID_COLUMNS, _SUBTYPE_COLUMNS = ("case_id", "Names", "names", "Name"), ("subtype", "Subtype")


def is_nifti(name: str) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz``."""
    return _SUFFIX.search(name) is not None


def is_image(name: str) -> bool:
    """Whether a NIfTI file name is a channel-0 image (``*_0000.nii[.gz]``) rather than a mask."""
    return is_nifti(name) and _SUFFIX.sub("", name).endswith(CHANNEL)


def case_id_of(name: str) -> str:
    """``quiz_0_041.nii.gz`` / ``quiz_0_041_0000.nii[.gz]`` / ``quiz_0_041`` -> ``quiz_0_041``."""
    return _SUFFIX.sub("", name).removesuffix(CHANNEL)


def image_name(case_id: str) -> str:
    """``quiz_0_041`` -> ``quiz_0_041_0000.nii.gz``."""
    return f"{case_id}{CHANNEL}{NII}"


def mask_name(case_id: str) -> str:
    """``quiz_0_041`` -> ``quiz_0_041.nii.gz``."""
    return f"{case_id}{NII}"


def quiz_case_id(subtype: int | None, number: int) -> str:
    """``quiz_{subtype}_{NNN}`` for train/validation cases, ``quiz_{NNN}`` for test cases (``subtype=None``)."""
    return f"quiz_{number:03d}" if subtype is None else f"quiz_{subtype}_{number:03d}"


def case_paths(root: str | Path, split: str, subtype: int, number: int) -> tuple[Path, Path]:
    """(image, mask) paths of case ``number`` of a split; test masks go to ``test_labels/``."""
    root = Path(root)
    if split == TEST_DIR:
        case = quiz_case_id(None, number)
        return root / TEST_DIR / image_name(case), root / TEST_LABELS_DIR / mask_name(case)
    if split not in TRAIN_SPLITS:
        raise DatasetError(f"split {split!r} is not one of {SPLITS}", code="bad_layout")
    folder = root / split / f"subtype{subtype}"
    case = quiz_case_id(subtype, number)
    return folder / image_name(case), folder / mask_name(case)


def subtype_dirs(folder: str | Path) -> list[tuple[int, Path]]:
    """``[(k, folder/subtype{k})]`` sorted by k; empty when ``folder`` has no subtype sub-folders."""
    found = [(p, SUBTYPE_DIR.match(p.name)) for p in Path(folder).iterdir() if p.is_dir()]
    return sorted((int(m.group(1)), p) for p, m in found if m)


def read_subtype_csv(path: str | Path) -> dict[str, int]:
    """Read ``Names,Subtype`` (quiz) or ``case_id,subtype`` CSVs into ``{case_id: subtype}``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"subtype CSV {path} does not exist; pass a file with columns Names,Subtype", code="missing_file"
        )
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        id_col = next((c for c in _ID_COLUMNS if c in columns), None)
        sub_col = next((c for c in _SUBTYPE_COLUMNS if c in columns), None)
        if id_col is None or sub_col is None:
            raise DatasetError(
                f"{path}: columns {columns} lack a case column ({'/'.join(_ID_COLUMNS)}) or a "
                f"subtype column ({'/'.join(_SUBTYPE_COLUMNS)})",
                code="bad_csv",
            )
        out: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            out[case_id_of(row[id_col].strip())] = parse_subtype(row[sub_col], f"{path.name} line {line}")
    return out


def write_subtype_csv(path: str | Path, subtypes: Mapping[str, int]) -> Path:
    """Write ``{case_id: subtype}`` in the quiz's ``subtype_results.csv`` format (``Names,Subtype``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Names", "Subtype"])
        writer.writerows([mask_name(case), int(sub)] for case, sub in sorted(subtypes.items()))
    return path


def parse_subtype(value: object, where: str) -> int:
    """A subtype cell (``"2"``, ``"2.0"``) as an int in :data:`pancreas.SUBTYPES`, else a DatasetError."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer() or int(number) not in SUBTYPES:
        raise DatasetError(f"{where}: subtype {value!r} is not one of {SUBTYPES}", code="bad_subtype")
    return int(number)
