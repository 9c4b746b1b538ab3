"""Convert a tiny ``pancreas synth`` output and score the converted labels against the originals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pancreas.evaluation import evaluate_folders
from training.convert import convert_quiz
from training.subtypes import read_subtype_rows

phantoms = pytest.importorskip("pancreas.phantoms", reason="the phantom generator (pancreas synth) is absent")


def test_convert_synth_output(tmp_path: Path) -> None:
    quiz = phantoms.synthesize(
        tmp_path / "phantoms", phantoms.SynthConfig(cases_per_subtype=1, splits=("train", "test"), seed=3)
    )
    out = convert_quiz(quiz, dataset_id=501, workdir=tmp_path / "work")
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3
    rows = read_subtype_rows(out)
    assert sorted((r.split, r.subtype) for r in rows) == [
        ("test", 0),
        ("test", 1),
        ("test", 2),
        ("train", 0),
        ("train", 1),
        ("train", 2),
    ]
    assert not (out / "quiz_splits.json").exists()  # no validation split
    # The canonicalized labels cover the same voxels as the originals, whatever the headers were.
    for split, gt in (("labelsTr", quiz / "train"), ("labelsTs", quiz / "test_labels")):
        report = evaluate_folders(out / split, gt)
        assert report.summary["n_cases"] == 3 and not report.summary["missing_predictions"]
        assert report.summary["whole_dsc"] == report.summary["lesion_dsc"] == 1.0
        assert report.summary["whole_hd95"] == 0.0
