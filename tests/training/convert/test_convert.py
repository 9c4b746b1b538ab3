"""pancreas convert: quiz layout -> canonical nnU-Net raw dataset, and every error case."""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.cli import main
from pancreas.errors import DatasetError
from pancreas.nifti import canonicalize, read_image
from pancreas.testing import write_nifti as write
from training.convert import convert_nnunet_raw, convert_quiz
from training.subtypes import read_quiz_splits, read_subtype_rows, read_subtypes

SHAPE = (6, 8, 10)  # numpy (z, y, x)
LABEL_ONE = np.float32(1.0000153)  # how the real quiz stores label 1


def _oblique() -> tuple[float, ...]:
    a = math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)  # voxel x->world y, y->z, z->x
    return tuple((rz @ perm).ravel())


HEADERS = {
    "lps": {
        "spacing": (0.8, 0.8, 2.0),
        "origin": (10.0, -20.0, 30.0),
        "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    },
    "ras": {
        "spacing": (0.7, 0.7, 1.5),
        "origin": (-5.0, 5.0, 0.0),
        "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    },
    "oblique": {"spacing": (0.9, 0.6, 3.0), "origin": (1.5, 2.5, -3.5), "direction": _oblique()},
}


def make_labels(seed: int) -> np.ndarray:
    """Asymmetric pancreas block with a lesion inside, so any flip or transpose would be visible."""
    labels = np.zeros(SHAPE, dtype=np.float32)
    o = seed % 2
    labels[1:5, 2 + o : 7, 3 : 9 - o] = LABEL_ONE
    labels[2:4, 3 + o : 5, 4:6] = 2.0
    return labels


def make_ct(seed: int, *, integral: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ct = rng.integers(-100, 200, size=SHAPE).astype(np.int16)
    return ct if integral else ct.astype(np.float32) + np.float32(0.25)


def write_case(folder: Path, case: str, header: dict, seed: int, *, integral: bool = True) -> None:
    write(folder / f"{case}_0000.nii.gz", make_ct(seed, integral=integral), header)
    write(folder / f"{case}.nii.gz", make_labels(seed), header)


@pytest.fixture
def quiz(tmp_path: Path) -> Path:
    """train: subtype0 (LPS), subtype1 (RAS, float CT); validation: subtype2 (oblique); test + test_labels."""
    root = tmp_path / "quiz"
    write_case(root / "train/subtype0", "quiz_0_001", HEADERS["lps"], 1)
    write_case(root / "train/subtype1", "quiz_1_002", HEADERS["ras"], 2, integral=False)
    write_case(root / "validation/subtype2", "quiz_2_003", HEADERS["oblique"], 3)
    write(root / "test/quiz_004_0000.nii.gz", make_ct(4), HEADERS["ras"])
    write(root / "test_labels/quiz_004.nii.gz", make_labels(4), HEADERS["ras"])
    (root / "test_labels/subtype_results.csv").write_text("Names,Subtype\nquiz_004.nii.gz,1\n")
    return root


ORIGINALS = {  # case -> (image, mask) relative to the quiz root
    "quiz_0_001": ("train/subtype0/quiz_0_001_0000.nii.gz", "train/subtype0/quiz_0_001.nii.gz"),
    "quiz_1_002": ("train/subtype1/quiz_1_002_0000.nii.gz", "train/subtype1/quiz_1_002.nii.gz"),
    "quiz_2_003": ("validation/subtype2/quiz_2_003_0000.nii.gz", "validation/subtype2/quiz_2_003.nii.gz"),
}


def _affine(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """index (x, y, z) -> world: origin + A @ index."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()), d * np.asarray(image.GetSpacing())[None, :]


def _assert_same_in_world(converted: sitk.Image, original: sitk.Image, *, labels: bool = False) -> None:
    """Every converted voxel holds the original's value at the same physical point."""
    o_c, a_c = _affine(converted)
    o_o, a_o = _affine(original)
    size = converted.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(-1, 3)
    world = o_c + idx @ a_c.T
    idx_o = np.linalg.solve(a_o, (world - o_o).T).T
    np.testing.assert_allclose(idx_o, np.rint(idx_o), atol=1e-4)  # lands exactly on original voxels
    idx_o = np.rint(idx_o).astype(int)
    arr_c, arr_o = sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(original)
    expected = arr_o[idx_o[:, 2], idx_o[:, 1], idx_o[:, 0]]
    np.testing.assert_array_equal(
        arr_c[idx[:, 2], idx[:, 1], idx[:, 0]], np.rint(expected) if labels else expected
    )


def test_round_trip(quiz: Path, tmp_path: Path) -> None:
    out = convert_quiz(quiz, dataset_id=501, workdir=tmp_path / "work")
    assert out == tmp_path / "work/nnUNet_raw/Dataset501_PancreasQuiz"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "pancreas": 1, "lesion": 2} and meta["numTraining"] == 3
    shapes = set()
    for case, (image, mask) in ORIGINALS.items():
        label = sitk.ReadImage(str(out / f"labelsTr/{case}.nii.gz"))
        ct = sitk.ReadImage(str(out / f"imagesTr/{case}_0000.nii.gz"))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2}  # 1.0000153 rounded to 1
        _assert_same_in_world(label, sitk.ReadImage(str(quiz / mask)), labels=True)
        _assert_same_in_world(ct, sitk.ReadImage(str(quiz / image)))
        np.testing.assert_allclose(
            np.asarray(ct.GetDirection()).reshape(3, 3), np.eye(3), atol=0.2
        )  # canonical
        original = read_image(quiz / mask)  # held: nifti.canonicalize may return a view into its buffer
        canonical = canonicalize(original).array
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), np.rint(canonical))
        shapes.add(sitk.GetArrayFromImage(label).shape)
    assert len(shapes) > 1  # the oblique case's axes were permuted into canonical order
    dtypes = {c: sitk.ReadImage(str(out / f"imagesTr/{c}_0000.nii.gz")).GetPixelID() for c in ORIGINALS}
    assert dtypes == {
        "quiz_0_001": sitk.sitkInt16,
        "quiz_1_002": sitk.sitkFloat32,
        "quiz_2_003": sitk.sitkInt16,
    }
    assert (out / "imagesTs/quiz_004_0000.nii.gz").is_file() and (out / "labelsTs/quiz_004.nii.gz").is_file()


def test_subtypes_and_splits(quiz: Path, tmp_path: Path) -> None:
    out = convert_quiz(quiz, dataset_id=501, name="Tiny", workdir=tmp_path)
    with (out / "subtypes.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["case_id", "subtype", "split", "source"],  # no phantoms.json in the quiz folder: real data
        ["quiz_0_001", "0", "train", "real"],
        ["quiz_1_002", "1", "train", "real"],
        ["quiz_2_003", "2", "validation", "real"],
        ["quiz_004", "1", "test", "real"],
    ]
    assert read_subtypes(out, splits=("train", "validation")) == {
        "quiz_0_001": 0,
        "quiz_1_002": 1,
        "quiz_2_003": 2,
    }
    assert read_subtypes(out)["quiz_004"] == 1
    assert read_quiz_splits(out) == {"train": ["quiz_0_001", "quiz_1_002"], "validation": ["quiz_2_003"]}


def test_nnunet_accepts_output(quiz: Path, tmp_path: Path) -> None:
    """nnU-Net's own label and geometry checks pass on the converted dataset."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    out = convert_quiz(quiz, dataset_id=501, workdir=tmp_path)
    for case in ORIGINALS:
        label = str(out / f"labelsTr/{case}.nii.gz")
        assert verify_labels(label, SimpleITKIO, [0, 1, 2])
        assert check_cases([str(out / f"imagesTr/{case}_0000.nii.gz")], label, 1, SimpleITKIO)


def _move(root: Path, src: str, dst: str) -> None:
    (root / dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(root / src, root / dst)


def _label3(root: Path) -> None:
    labels = make_labels(1)
    labels[0, 0, 0] = 3
    write(root / ORIGINALS["quiz_0_001"][1], labels, HEADERS["lps"])


def _bad_spacing(root: Path) -> None:
    write(root / ORIGINALS["quiz_0_001"][1], make_labels(1), {**HEADERS["lps"], "spacing": (0.8, 0.8, 2.5)})


def _probabilities(root: Path) -> None:
    write(root / ORIGINALS["quiz_0_001"][1], make_labels(1) * np.float32(0.5), HEADERS["lps"])


def _mismatch(root: Path) -> None:
    for suffix in ("_0000.nii.gz", ".nii.gz"):
        _move(root, f"train/subtype0/quiz_0_001{suffix}", f"train/subtype1/quiz_0_001{suffix}")


ERROR_CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "subtype_mismatch": (
        _mismatch,
        [
            "train/subtype1/quiz_0_001_0000.nii.gz",
            "says subtype 0",
            "folder subtype1",
            "move it to subtype0/",
        ],
    ),
    "label_3": (_label3, ["quiz_0_001.nii.gz", "label values [3]", "relabel"]),
    "geometry": (
        _bad_spacing,
        [
            "quiz_0_001_0000.nii.gz",
            "quiz_0_001.nii.gz",
            "differ in spacing",
            "(0.8, 0.8, 2.0) vs (0.8, 0.8, 2.5)",
            "resample",
        ],
    ),
    "probabilities": (_probabilities, ["quiz_0_001.nii.gz", "not integers"]),
    "missing_mask": (
        lambda r: (r / ORIGINALS["quiz_0_001"][1]).unlink(),
        ["quiz_0_001_0000.nii.gz", "mask quiz_0_001.nii.gz is missing"],
    ),
    "missing_image": (
        lambda r: (r / ORIGINALS["quiz_1_002"][0]).unlink(),
        ["train/subtype1/quiz_1_002.nii.gz", "image quiz_1_002_0000.nii.gz is missing"],
    ),
    "stray_file": (
        lambda r: (r / "train/subtype0/notes.txt").write_text("x"),
        ["train/subtype0/notes.txt", "unexpected entry", "move or delete"],
    ),
    "stray_folder": (lambda r: (r / "train/extra").mkdir(), ["train/extra", "only subtype{k}/"]),
    "bad_name": (
        lambda r: _move(r, ORIGINALS["quiz_0_001"][1], "train/subtype0/case7.nii.gz"),
        ["case7.nii.gz", "does not follow quiz_{k}_{NNN}"],
    ),
    "duplicate": (
        lambda r: shutil.copytree(r / "train/subtype0", r / "validation/subtype0"),
        ["case quiz_0_001 appears twice"],
    ),
}


@pytest.mark.parametrize("kind", sorted(ERROR_CASES))
def test_errors_name_the_file_and_fix(quiz: Path, tmp_path: Path, kind: str) -> None:
    mutate, expected = ERROR_CASES[kind]
    mutate(quiz)
    with pytest.raises(DatasetError) as info:
        convert_quiz(quiz, dataset_id=501, workdir=tmp_path / "work")
    for text in expected:
        assert text in str(info.value), (text, str(info.value))
    assert not list((tmp_path / "work/nnUNet_raw").glob("*Dataset501*"))  # nothing half-written


def test_errors_are_collected(quiz: Path, tmp_path: Path) -> None:
    _label3(quiz)
    (quiz / ORIGINALS["quiz_1_002"][0]).unlink()
    with pytest.raises(DatasetError, match=r"2 problem\(s\)") as info:
        convert_quiz(quiz, dataset_id=501, workdir=tmp_path)
    assert "quiz_0_001.nii.gz" in str(info.value) and "quiz_1_002_0000.nii.gz" in str(info.value)


def test_existing_target_and_id_clash(quiz: Path, tmp_path: Path) -> None:
    convert_quiz(quiz, dataset_id=501, workdir=tmp_path)
    with pytest.raises(DatasetError, match="already exists; pass overwrite=True"):
        convert_quiz(quiz, dataset_id=501, workdir=tmp_path)
    assert convert_quiz(quiz, dataset_id=501, workdir=tmp_path, overwrite=True).is_dir()
    with pytest.raises(DatasetError, match="already used by .*Dataset501_PancreasQuiz"):
        convert_quiz(quiz, dataset_id=501, name="Other", workdir=tmp_path)


def test_nnunet_raw_input(quiz: Path, tmp_path: Path) -> None:
    first = convert_quiz(quiz, dataset_id=501, workdir=tmp_path)
    csv_path = tmp_path / "subtypes_quiz_format.csv"
    csv_path.write_text("Names,Subtype\nquiz_0_001.nii.gz,0\nquiz_1_002.nii.gz,1\nquiz_2_003.nii.gz,2\n")
    second = convert_nnunet_raw(first, csv_path, dataset_id=502, name="Again", workdir=tmp_path)
    assert read_subtypes(second) == {"quiz_0_001": 0, "quiz_1_002": 1, "quiz_2_003": 2}
    assert {r.split for r in read_subtype_rows(second)} == {"train"}
    for case in ORIGINALS:
        a = sitk.ReadImage(str(first / f"labelsTr/{case}.nii.gz"))
        b = sitk.ReadImage(str(second / f"labelsTr/{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection())
    csv_path.write_text("case_id,subtype\nquiz_0_001,0\nquiz_1_002,1\n")
    with pytest.raises(DatasetError, match="case quiz_2_003: no subtype"):
        convert_nnunet_raw(first, csv_path, dataset_id=503, workdir=tmp_path)
    csv_path.write_text("case_id,subtype\nquiz_0_001,0\nquiz_1_002,7\n")
    with pytest.raises(DatasetError, match="subtype '7' is not one of"):
        convert_nnunet_raw(first, csv_path, dataset_id=503, workdir=tmp_path)


def test_cli(quiz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "wd"
    assert main(["convert", str(quiz), "--dataset-id", "501", "--workdir", str(workdir)]) == 0
    printed = capsys.readouterr().out
    assert "Dataset501_PancreasQuiz" in printed and "training cases: 3" in printed
    raw = workdir / "nnUNet_raw/Dataset501_PancreasQuiz"
    assert main(["convert", str(raw), "--dataset-id", "502", "--workdir", str(workdir)]) == 1
    assert "pass --subtypes CSV" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(raw),
                "--dataset-id",
                "502",
                "--workdir",
                str(workdir),
                "--subtypes",
                str(raw / "subtypes.csv"),
            ]
        )
        == 0
    )
