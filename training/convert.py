"""Quiz layout (or an existing nnU-Net raw dataset) -> canonicalized nnU-Net v2 raw dataset.

Output: ``WORKDIR/nnUNet_raw/Dataset{ID:03d}_{Name}/`` with ``imagesTr/``, ``labelsTr/`` (train *and*
validation cases; nnU-Net runs its own CV), ``imagesTs/`` (+ ``labelsTs/`` when the quiz has
``test_labels/``), ``dataset.json``, ``subtypes.csv`` and, when there is a validation split,
``quiz_splits.json`` (see :mod:`training.subtypes`).

Each case carries its **source** (``real``, or ``phantom`` for a folder written by ``pancreas synth``,
recognised by its ``phantoms.json``) into ``subtypes.csv`` and ``dataset.json`` (``sources``: cases per
source). Several quiz folders can be merged into one dataset (e.g. real cases plus phantoms); phantom case
ids are then prefixed with ``phantom_`` so they cannot clash with real quiz ids.

Every image and mask is re-written through :mod:`pancreas.nifti` in canonical orientation, so all cases
share the array axes the inference engine uses. CT is stored as int16 when its values are integral
and fit, else float32; masks as uint8 after rounding (real quiz masks hold 1.0000153 for label 1).
All problems found (names, subtype folders, labels, geometry, missing files) are collected and
raised as one :class:`~pancreas.errors.DatasetError`; nothing is written in that case.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from pancreas import LABELS
from pancreas.errors import DatasetError, PancreasError
from pancreas.evaluation import grid_mismatch, label_array
from pancreas.nifti import canonicalize, read_image, write_image
from pancreas.quiz import (
    NII,
    QUIZ_MASK,
    SUBTYPE_CSV,
    SUBTYPE_DIR,
    TEST_DIR,
    TEST_LABELS_DIR,
    TRAIN_SPLITS,
    case_id_of,
    image_name,
    is_image,
    mask_name,
    read_subtype_csv,
)
from pancreas.sources import PHANTOM, REAL, source_of
from training.subtypes import SubtypeRow, read_subtypes, source_counts, write_quiz_splits, write_subtypes

__all__ = ["Case", "convert", "convert_nnunet_raw", "convert_quiz", "read_subtypes"]

logger = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 20
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_INT16 = np.iinfo(np.int16)
PHANTOM_PREFIX = "phantom_"


@dataclass(frozen=True)
class Case:
    """One case to convert; ``mask`` is None for unlabeled test images."""

    case_id: str
    image: Path
    mask: Path | None
    subtype: int | None
    split: str  # train | validation | test
    source: str = REAL  # pancreas.sources.SOURCES


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _pair_files(folder: Path, errors: list[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Split a folder's files into images (``*_0000.nii.gz``) and masks (other ``*.nii.gz``)."""
    images, masks = {}, {}
    for path in _visible(folder):
        if path.is_file() and path.name.endswith(NII) and is_image(path.name):
            images[case_id_of(path.name)] = path
        elif path.is_file() and path.name.endswith(NII):
            masks[case_id_of(path.name)] = path
        else:
            errors.append(
                f"{path}: unexpected entry; a case folder holds only NAME_0000{NII} images and "
                f"NAME{NII} masks: move or delete it"
            )
    return images, masks


def _scan_subtype_folder(folder: Path, split: str, subtype: int, errors: list[str]) -> list[Case]:
    images, masks = _pair_files(folder, errors)
    cases = []
    for case in sorted(set(images) | set(masks)):
        match = QUIZ_MASK.match(case)
        if match is None:
            errors.append(
                f"{images.get(case) or masks[case]}: name does not follow quiz_{{k}}_{{NNN}}{NII} (mask) "
                f"/ quiz_{{k}}_{{NNN}}_0000{NII} (image); rename it"
            )
        elif int(match.group(1)) != subtype:
            errors.append(
                f"{images.get(case) or masks[case]}: file name says subtype {match.group(1)} but it is "
                f"in folder {folder.name}; move it to subtype{match.group(1)}/ or rename it"
            )
        elif case not in masks:
            errors.append(
                f"{images[case]}: mask {case}{NII} is missing; add it next to the image or remove the image"
            )
        elif case not in images:
            errors.append(f"{masks[case]}: image {case}_0000{NII} is missing; add it or remove the mask")
        else:
            cases.append(Case(case, images[case], masks[case], subtype, split))
    return cases


def _scan_split(split_dir: Path, errors: list[str]) -> list[Case]:
    cases: list[Case] = []
    for entry in _visible(split_dir):
        match = SUBTYPE_DIR.match(entry.name)
        if not entry.is_dir() or match is None:
            errors.append(
                f"{entry}: unexpected entry in {split_dir.name}/; it should hold only subtype{{k}}/ "
                "folders: move or delete it"
            )
            continue
        cases += _scan_subtype_folder(entry, split_dir.name, int(match.group(1)), errors)
    return cases


def _scan_test(quiz_dir: Path, errors: list[str]) -> list[Case]:
    test_dir, label_dir = quiz_dir / TEST_DIR, quiz_dir / TEST_LABELS_DIR
    if not test_dir.is_dir():
        return []
    images, stray = _pair_files(test_dir, errors)
    errors += [
        f"{p}: test/ holds only images quiz_{{NNN}}_0000{NII}; move masks to test_labels/"
        for p in stray.values()
    ]
    masks: dict[str, Path] = {}
    subtypes: dict[str, int] = {}
    if label_dir.is_dir():
        masks = {case_id_of(p.name): p for p in label_dir.glob(f"*{NII}")}
        if (label_dir / SUBTYPE_CSV).is_file():
            subtypes = read_subtype_csv(label_dir / SUBTYPE_CSV)
    for case in sorted(set(masks) - set(images)):
        errors.append(
            f"{masks[case]}: test label has no image test/{case}_0000{NII}; add the image or remove it"
        )
    return [Case(c, images[c], masks.get(c), subtypes.get(c), "test") for c in sorted(images)]


def scan_quiz(quiz_dir: str | Path) -> tuple[list[Case], list[str]]:
    """All cases of a quiz folder, tagged with its source, plus the layout problems found (not raised)."""
    quiz_dir = Path(quiz_dir)
    if not quiz_dir.is_dir():
        raise DatasetError(f"quiz folder {quiz_dir} does not exist", code="missing_file")
    splits = [quiz_dir / s for s in TRAIN_SPLITS if (quiz_dir / s).is_dir()]
    if not splits:
        raise DatasetError(
            f"{quiz_dir} has no train/ or validation/ folder; expected the quiz layout "
            f"{{train,validation}}/subtype{{k}}/quiz_{{k}}_{{NNN}}[_0000]{NII}",
            code="bad_layout",
        )
    errors: list[str] = []
    cases = [c for split in splits for c in _scan_split(split, errors)] + _scan_test(quiz_dir, errors)
    source = source_of(quiz_dir, parents=0)
    cases = [replace(c, source=source) for c in cases]
    return cases, errors + _duplicates(cases)


def scan_quiz_folders(quiz_dirs: Sequence[str | Path]) -> tuple[list[Case], list[str]]:
    """Cases of one or more quiz folders; with several sources, phantom ids get :data:`PHANTOM_PREFIX`."""
    cases: list[Case] = []
    errors: list[str] = []
    for folder in quiz_dirs:
        found, problems = scan_quiz(folder)
        cases += found
        errors += problems
    if len({c.source for c in cases}) > 1:
        cases = [replace(c, case_id=PHANTOM_PREFIX + c.case_id) if c.source == PHANTOM else c for c in cases]
    if len(quiz_dirs) > 1:
        errors += _duplicates(cases)
    return cases, errors


def _duplicates(cases: Iterable[Case]) -> list[str]:
    seen: dict[str, Case] = {}
    errors = []
    for case in cases:
        if case.case_id in seen:
            errors.append(
                f"case {case.case_id} appears twice: {seen[case.case_id].image} and {case.image}; "
                "case ids must be unique"
            )
        seen[case.case_id] = case
    return errors


def _ct_dtype(array: np.ndarray) -> type:
    integral = np.array_equal(array, np.rint(array))
    fits = array.size == 0 or (array.min() >= _INT16.min and array.max() <= _INT16.max)
    return np.int16 if integral and fits else np.float32


def _convert_case(case: Case, out: Path) -> None:
    """Validate one case and write it canonicalized; raises PancreasError naming the file."""
    image = read_image(case.image)
    volume = canonicalize(image, name=case.image.name)
    images_dir, labels_dir = ("imagesTs", "labelsTs") if case.split == "test" else ("imagesTr", "labelsTr")
    if case.mask is not None:
        mask = read_image(case.mask)
        problem = grid_mismatch(image, mask)
        if problem is not None:
            raise DatasetError(
                f"{case.image} and {case.mask} differ in {problem}; resample the mask onto the image grid",
                code="grid_mismatch",
            )
        labels = label_array(sitk.GetArrayViewFromImage(mask), str(case.mask))
        if not labels.any() and case.split != "test":
            logger.warning("%s: the mask is empty (no pancreas)", case.mask)
        canonical = np.ascontiguousarray(volume.orientation.to_canonical(labels))
        write_image(
            volume.canonical_image(canonical, dtype=np.uint8), out / labels_dir / mask_name(case.case_id)
        )
    ct = volume.canonical_image(dtype=_ct_dtype(volume.array))
    write_image(ct, out / images_dir / image_name(case.case_id))


def _try(case: Case, out: Path) -> str | None:
    try:
        _convert_case(case, out)
    except PancreasError as exc:
        return str(exc)
    return None


def _raise_if(errors: list[str], source: Path) -> None:
    if not errors:
        return
    shown = "\n  - ".join(errors[:MAX_LISTED_ERRORS])
    more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
    raise DatasetError(
        f"{source}: {len(errors)} problem(s) found, nothing was written:\n  - {shown}{more}",
        code="invalid_dataset",
    )


def _target(workdir: Path, dataset_id: int, name: str, overwrite: bool) -> Path:
    if not 1 <= dataset_id <= 999:
        raise DatasetError(
            f"dataset id {dataset_id} must be in 1..999 (nnU-Net uses 3 digits)", code="bad_id"
        )
    if not DATASET_NAME.match(name):
        raise DatasetError(f"dataset name {name!r} must be letters, digits, '_' or '-'", code="bad_name")
    raw = Path(workdir) / "nnUNet_raw"
    target = raw / f"Dataset{dataset_id:03d}_{name}"
    clash = [p for p in raw.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != target]
    if clash:
        raise DatasetError(
            f"dataset id {dataset_id} is already used by {clash[0]}; pick another --dataset-id "
            "or delete that folder",
            code="id_in_use",
        )
    if target.exists() and not overwrite:
        raise DatasetError(
            f"{target} already exists; pass overwrite=True (--overwrite) to replace it", code="exists"
        )
    return target


def _dataset_json(name: str, n_training: int, description: str) -> dict:
    return {
        "name": name,
        "description": description,
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": n_training,
        "file_ending": NII,
        "overwrite_image_reader_writer": "SimpleITKIO",
    }


def _write_dataset(
    cases: list[Case], errors: list[str], source: Path, target: Path, num_workers: int, description: str
) -> Path:
    """Convert all cases into a temporary folder, then move it into place if nothing failed.

    Cases are checked even when the layout has problems, so one error lists everything to fix.
    """
    if not errors and not any(c.split in TRAIN_SPLITS for c in cases):
        raise DatasetError(f"{source}: no labeled training cases found", code="empty_dataset")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (partial / sub).mkdir(parents=True)
    try:
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            results = pool.map(lambda c: _try(c, partial), cases)
            failures = list(tqdm(results, total=len(cases), desc="convert", unit="case", disable=None))
        _raise_if(errors + [f for f in failures if f], source)
        train = [c for c in cases if c.split in TRAIN_SPLITS]
        meta = _dataset_json(target.name.split("_", 1)[1], len(train), description)
        meta["sources"] = source_counts({c.case_id: c.source for c in train})
        (partial / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_subtypes(
            partial,
            [SubtypeRow(c.case_id, c.subtype, c.split, c.source) for c in cases if c.subtype is not None],
        )
        validation = [c.case_id for c in cases if c.split == "validation"]
        if validation:
            write_quiz_splits(partial, [c.case_id for c in cases if c.split == "train"], validation)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    logger.info("wrote %s (%d training, %d test cases)", target, len(train), len(cases) - len(train))
    return target


def convert_quiz(
    quiz_dir: str | Path | Sequence[str | Path],
    *,
    dataset_id: int,
    name: str = "PancreasQuiz",
    workdir: str | Path = Path("work_dirs"),
    overwrite: bool = False,
    num_workers: int = 2,
) -> Path:
    """Convert one quiz-layout folder, or several merged; returns the dataset folder (see the module docstring).

    Raises:
        DatasetError: layout, name, subtype-folder, label or geometry problems (all listed at once).
    """
    folders = [Path(quiz_dir)] if isinstance(quiz_dir, (str, Path)) else [Path(q) for q in quiz_dir]
    target = _target(Path(workdir), dataset_id, name, overwrite)
    cases, errors = scan_quiz_folders(folders)
    described = ", ".join(f"{f.resolve()} ({source_of(f, parents=0)})" for f in folders)
    return _write_dataset(
        cases,
        errors,
        folders[0],
        target,
        num_workers,
        f"pancreas quiz converted from {described}",
    )


def scan_nnunet_raw(raw_dir: str | Path, subtypes: dict[str, int]) -> tuple[list[Case], list[str]]:
    """Cases of an nnU-Net raw dataset (single-channel ``.nii.gz``) with their subtypes."""
    raw_dir = Path(raw_dir)
    meta = json.loads((raw_dir / "dataset.json").read_text())
    if meta.get("file_ending") != NII or len(meta.get("channel_names", {})) != 1:
        raise DatasetError(
            f"{raw_dir / 'dataset.json'}: need one channel and file_ending {NII!r}, got "
            f"{meta.get('channel_names')} / {meta.get('file_ending')!r}; convert to NIfTI first",
            code="bad_layout",
        )
    errors: list[str] = []
    images, stray = _pair_files(raw_dir / "imagesTr", errors)
    errors += [f"{p}: imagesTr holds only CASE_0000{NII} files; move it to labelsTr/" for p in stray.values()]
    masks = {case_id_of(p.name): p for p in sorted((raw_dir / "labelsTr").glob(f"*{NII}"))}
    errors += [
        f"{images[c]}: label labelsTr/{c}{NII} is missing; add it" for c in sorted(set(images) - set(masks))
    ]
    errors += [
        f"{masks[c]}: image imagesTr/{c}_0000{NII} is missing; add it"
        for c in sorted(set(masks) - set(images))
    ]
    errors += [
        f"case {c}: no subtype in the subtype CSV; add a row" for c in sorted(set(images) - set(subtypes))
    ]
    source = source_of(raw_dir, parents=0)
    cases = [Case(c, images[c], masks[c], subtypes.get(c), "train", source)
             for c in sorted(set(images) & set(masks))]
    test_images, test_stray = (
        _pair_files(raw_dir / "imagesTs", errors) if (raw_dir / "imagesTs").is_dir() else ({}, {})
    )
    errors += [
        f"{p}: imagesTs holds only CASE_0000{NII} files; move or delete it" for p in test_stray.values()
    ]
    cases += [Case(c, p, None, subtypes.get(c), "test", source) for c, p in sorted(test_images.items())]
    return cases, errors + _duplicates(cases)


def convert_nnunet_raw(
    raw_dir: str | Path,
    subtypes_csv: str | Path,
    *,
    dataset_id: int,
    name: str = "PancreasQuiz",
    workdir: str | Path = Path("work_dirs"),
    overwrite: bool = False,
    num_workers: int = 2,
) -> Path:
    """Validate an nnU-Net raw dataset, re-write it canonicalized as ``Dataset{ID}_{Name}`` with subtypes."""
    raw_dir = Path(raw_dir)
    if not (raw_dir / "dataset.json").is_file() or not (raw_dir / "imagesTr").is_dir():
        raise DatasetError(
            f"{raw_dir} is not an nnU-Net raw dataset (needs dataset.json and imagesTr/)", code="bad_layout"
        )
    target = _target(Path(workdir), dataset_id, name, overwrite)
    if target.resolve() == raw_dir.resolve():
        raise DatasetError(
            f"{raw_dir} is the output folder itself; choose another --dataset-id or --name", code="bad_layout"
        )
    cases, errors = scan_nnunet_raw(raw_dir, read_subtype_csv(subtypes_csv))
    return _write_dataset(
        cases,
        errors,
        raw_dir,
        target,
        num_workers,
        f"nnU-Net raw dataset re-written from {raw_dir.resolve()}",
    )


def is_nnunet_raw(path: str | Path) -> bool:
    return (Path(path) / "dataset.json").is_file() and (Path(path) / "imagesTr").is_dir()


def convert(
    source: str | Path | Sequence[str | Path],
    *,
    dataset_id: int,
    name: str = "PancreasQuiz",
    workdir: str | Path = Path("work_dirs"),
    subtypes_csv: str | Path | None = None,
    overwrite: bool = False,
    num_workers: int = 2,
) -> Path:
    """Convert either layout: an nnU-Net raw dataset (needs ``subtypes_csv``) or one or more quiz folders."""
    options = {
        "dataset_id": dataset_id,
        "name": name,
        "workdir": workdir,
        "overwrite": overwrite,
        "num_workers": num_workers,
    }
    sources = [Path(source)] if isinstance(source, (str, Path)) else [Path(s) for s in source]
    if not sources:
        raise DatasetError("no source folder given; pass a quiz folder or an nnU-Net raw dataset")
    if len(sources) == 1 and is_nnunet_raw(sources[0]):
        source = sources[0]
        if subtypes_csv is None:
            raise DatasetError(
                f"{source} is an nnU-Net raw dataset; pass --subtypes CSV (columns case_id,subtype "
                "or Names,Subtype)",
                code="missing_subtypes",
            )
        return convert_nnunet_raw(source, subtypes_csv, **options)
    raw = [s for s in sources if is_nnunet_raw(s)]
    if raw:
        raise DatasetError(f"{raw[0]} is an nnU-Net raw dataset; only quiz folders can be merged, convert it "
                           "on its own", code="bad_layout")
    if subtypes_csv is not None:
        logger.warning("--subtypes is ignored for the quiz layout (subtypes come from subtype{k}/ folders)")
    return convert_quiz(sources, **options)
