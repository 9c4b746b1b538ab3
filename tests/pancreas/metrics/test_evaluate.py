"""pancreas evaluate end to end on real NIfTI files: GT vs itself, vs a hand-perturbed copy, and errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pancreas.cli import main
from pancreas.errors import DatasetError
from pancreas.evaluation import evaluate_folders
from pancreas.quiz import write_subtype_csv
from pancreas.testing import write_nifti as _write

SHAPE = (10, 12, 12)  # numpy (z, y, x); spacing (z, y, x) = (2, 1, 1) mm
HEADERS = {  # varied headers; sitk (x, y, z) order
    "quiz_0_001": {
        "spacing": (1.0, 1.0, 2.0),
        "origin": (0.0, 0.0, 0.0),
        "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    },
    "quiz_1_002": {
        "spacing": (1.0, 1.0, 2.0),
        "origin": (-50.0, 20.0, 7.5),
        "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    },
    "quiz_2_003": {
        "spacing": (1.0, 1.0, 2.0),
        "origin": (3.0, 4.0, 5.0),
        "direction": (1, 0, 0, 0, -1, 0, 0, 0, -1),
    },
}
SUBTYPE = {"quiz_0_001": 0, "quiz_1_002": 1, "quiz_2_003": 2}


def _mask() -> np.ndarray:
    """Pancreas block z 2..5, y 3..6, x 3..6 (64 voxels, label 1.0000153 like the quiz), lesion 2x2x2 inside."""
    m = np.zeros(SHAPE, dtype=np.float32)
    m[2:6, 3:7, 3:7] = np.float32(1.0000153)
    m[3:5, 4:6, 4:6] = 2.0
    return m


@pytest.fixture
def gt(tmp_path: Path) -> Path:
    """A quiz split folder: subtype{k}/quiz_{k}_{NNN}.nii.gz masks next to their images."""
    root = tmp_path / "validation"
    for case, header in HEADERS.items():
        folder = root / f"subtype{SUBTYPE[case]}"
        _write(folder / f"{case}.nii.gz", _mask(), header)
        _write(folder / f"{case}_0000.nii.gz", np.zeros(SHAPE, dtype=np.int16), header)  # ignored
    return root


def _copy_predictions(gt: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    for path in gt.glob("subtype*/quiz_*_???.nii.gz"):
        shutil.copy(path, out / path.name)
    return out


def test_gt_against_itself(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _copy_predictions(gt, tmp_path / "pred")
    subtypes = write_subtype_csv(tmp_path / "subtype_results.csv", SUBTYPE)
    report, per_case = tmp_path / "report.json", tmp_path / "per_case.csv"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(pred),
                "--gt",
                str(gt),
                "--pred-subtypes",
                str(subtypes),
                "--out",
                str(report),
                "--per-case",
                str(per_case),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "whole_dsc         1.0000" in printed and "macro-F1 1.0000" in printed
    summary = json.loads(report.read_text())["summary"]
    assert summary["whole_dsc"] == summary["lesion_dsc"] == summary["whole_nsd2"] == 1.0
    assert summary["whole_hd95"] == summary["lesion_hd95"] == 0.0
    assert summary["subtype"]["macro_f1"] == summary["subtype"]["accuracy"] == 1.0
    assert summary["subtype"]["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert len(list(csv.DictReader(per_case.open()))) == 3


def test_perturbed_copy_hand_computed(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _copy_predictions(gt, tmp_path / "pred")
    perturbed = _mask()
    perturbed[5] = 0  # remove the pancreas' last z slab (16 voxels); the lesion (z 3..4) is untouched
    _write(pred / "quiz_0_001.nii.gz", perturbed, HEADERS["quiz_0_001"])
    subtypes = write_subtype_csv(tmp_path / "pred.csv", {**SUBTYPE, "quiz_2_003": 1})  # one subtype flipped
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(pred),
                "--gt",
                str(gt),
                "--pred-subtypes",
                str(subtypes),
                "--out",
                str(report),
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    case = next(r for r in data["per_case"] if r["case_id"] == "quiz_0_001")
    # Whole pancreas: ref 64 voxels (4x4x4), pred 48 (4x4x3), all inside ref: DSC = 2*48/(64+48) = 6/7.
    # Boundaries (6-connectivity): pred 44 (48 - 2x2x1 interior), ref 56 (64 - 2x2x2 interior).
    # pred -> ref: 40 on ref's boundary (0 mm), 4 = pred's top-layer centre = ref interior, 1 mm in-plane.
    # ref -> pred: 40 on pred's boundary (0 mm), 16 = ref's removed top face, one 2 mm slice away.
    # HD95 = max(P95 of [0]*40+[1]*4 = 1, P95 of [0]*40+[2]*16 = 2) = 2 mm; NSD@2mm = 1.
    assert case["whole_dsc"] == pytest.approx(6 / 7)
    assert case["whole_hd95"] == pytest.approx(2.0)
    assert case["whole_nsd2"] == pytest.approx(1.0)
    assert (case["lesion_dsc"], case["lesion_hd95"]) == (1.0, 0.0)
    summary = data["summary"]
    assert summary["whole_dsc"] == pytest.approx((6 / 7 + 1 + 1) / 3)  # = 20/21
    assert summary["whole_hd95"] == pytest.approx(2 / 3)
    # Subtypes: true [0, 1, 2], predicted [0, 1, 1]. F1: class 0 = 1, class 1 = 2/(2+1+0) = 2/3, class 2 = 0.
    assert summary["subtype"]["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)  # = 5/9
    assert summary["subtype"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["subtype"]["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    printed = capsys.readouterr().out
    assert f"whole_dsc{20 / 21:>15.4f}" in printed and f"macro-F1 {5 / 9:.4f}" in printed


def test_missing_prediction_and_suffix(gt: Path, tmp_path: Path) -> None:
    pred = _copy_predictions(gt, tmp_path / "pred")
    (pred / "quiz_1_002.nii.gz").unlink()
    (pred / "quiz_2_003.nii.gz").rename(pred / "quiz_2_003_0000.nii.gz")  # _0000 suffix is accepted
    report = evaluate_folders(pred, gt, pred_subtypes={"quiz_0_001.nii.gz": 0, "quiz_2_003": 2})
    s = report.summary
    assert s["missing_predictions"] == ["quiz_1_002"]
    assert s["whole_dsc"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3: missing = empty prediction
    assert s["whole_hd95"] == 0.0 and s["whole_hd95_undefined"] == 1  # NaN left out of the mean
    assert s["subtype"]["missing"] == ["quiz_1_002"] and s["subtype"]["accuracy"] == pytest.approx(2 / 3)
    data = json.loads(report.to_json())
    assert data["per_case"][1]["whole_hd95"] is None and "one_empty" in data["conventions"]


def test_flat_gt_with_csv(gt: Path, tmp_path: Path) -> None:
    flat = _copy_predictions(gt, tmp_path / "test_labels")
    write_subtype_csv(flat / "subtype_results.csv", SUBTYPE)
    report = evaluate_folders(flat, flat, pred_subtypes=flat / "subtype_results.csv")
    assert report.summary["subtype"]["macro_f1"] == 1.0 and report.summary["n_cases"] == 3


def test_grid_mismatch_names_the_files(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _copy_predictions(gt, tmp_path / "pred")
    _write(pred / "quiz_0_001.nii.gz", _mask(), {**HEADERS["quiz_0_001"], "origin": (0.0, 0.0, 4.0)})
    with pytest.raises(DatasetError, match=r"quiz_0_001.nii.gz .* different grids \(origin"):
        evaluate_folders(pred, gt)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 1
    assert "write predictions on the reference image's grid" in capsys.readouterr().err


def test_bad_inputs(gt: Path, tmp_path: Path) -> None:
    pred = _copy_predictions(gt, tmp_path / "pred")
    (tmp_path / "bad.csv").write_text("Names,Subtype\nquiz_0_001.nii.gz,x\n")
    with pytest.raises(DatasetError, match="bad.csv line 2: subtype 'x'"):
        evaluate_folders(pred, gt, pred_subtypes=tmp_path / "bad.csv")
    bad = _mask()
    bad[0, 0, 0] = 4
    _write(pred / "quiz_0_001.nii.gz", bad, HEADERS["quiz_0_001"])
    with pytest.raises(DatasetError, match=r"quiz_0_001.nii.gz: label values \[4\]"):
        evaluate_folders(pred, gt)
    with pytest.raises(DatasetError, match="no reference subtypes"):
        evaluate_folders(pred, pred, pred_subtypes={"quiz_0_001": 0})
    with pytest.raises(DatasetError, match="no predicted masks"):
        evaluate_folders(gt, gt)  # a quiz split folder is not a flat prediction folder
    with pytest.raises(DatasetError, match="is a quiz root; pass one split folder"):
        evaluate_folders(pred, tmp_path)


def test_prediction_on_reoriented_grid(gt: Path, tmp_path: Path) -> None:
    """Same physical voxels stored with x flipped (origin moved to the far end): compared, not rejected."""
    pred = _copy_predictions(gt, tmp_path / "pred")
    header = HEADERS["quiz_0_001"]
    flipped = {
        **header,
        "direction": (-1, 0, 0, 0, 1, 0, 0, 0, 1),
        "origin": (header["origin"][0] + (SHAPE[2] - 1) * header["spacing"][0], *header["origin"][1:]),
    }
    perturbed = _mask()
    perturbed[5] = 0  # as in the hand-computed test: DSC 6/7, HD95 2 mm
    _write(pred / "quiz_0_001.nii.gz", perturbed[:, :, ::-1].copy(), flipped)
    row = next(r for r in evaluate_folders(pred, gt).per_case if r["case_id"] == "quiz_0_001")
    assert row["whole_dsc"] == pytest.approx(6 / 7) and row["whole_hd95"] == pytest.approx(2.0)


def test_lesion_volumes_and_size_strata(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _copy_predictions(gt, tmp_path / "pred")
    missed = _mask()
    missed[missed == 2] = 1  # the lesion called pancreas: not found
    _write(pred / "quiz_2_003.nii.gz", missed, HEADERS["quiz_2_003"])
    report = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    rows = {r["case_id"]: r for r in data["per_case"]}
    # the lesion is 2x2x2 voxels of 1 x 1 x 2 mm: 16 mm3 = 0.016 mL, in every reference
    assert [r["lesion_ml_ref"] for r in rows.values()] == pytest.approx([0.016] * 3)
    assert rows["quiz_2_003"]["lesion_ml_pred"] == 0.0 and rows["quiz_0_001"]["lesion_ml_pred"] == pytest.approx(0.016)
    small = data["summary"]["lesion_size"][0]
    assert (small["label"], small["n"]) == ("< 1 mL", 3)
    assert small["lesion_dsc"] == pytest.approx(2 / 3) and small["found"] == pytest.approx(2 / 3)
    assert all(b["n"] == 0 for b in data["summary"]["lesion_size"][1:])
    printed = capsys.readouterr().out
    assert "lesion DSC by true lesion volume" in printed and "| < 1 mL | 3 | 0.0 | 0.667 | 67% |" in printed
