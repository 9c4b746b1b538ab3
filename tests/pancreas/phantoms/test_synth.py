"""The quiz layout written by synthesize() and by the ``pancreas synth`` command."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pancreas.cli import main
from pancreas.errors import PancreasError
from pancreas.phantoms import SynthConfig, synthesize


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_and_balance(small_dataset: Path) -> None:
    files = _files(small_dataset)
    train = [f for f in files if f.startswith("train/")]
    assert len(train) == 12  # 3 subtypes x 2 cases x (image + mask)
    for f in train:
        m = re.fullmatch(r"train/subtype(\d)/quiz_(\d)_(\d{3})(_0000)?\.nii\.gz", f)
        assert m and m.group(1) == m.group(2), f
    test_images = [f for f in files if f.startswith("test/")]
    labels = [f for f in files if f.startswith("test_labels/") and f.endswith(".nii.gz")]
    assert len(test_images) == 6 and len(labels) == 6
    assert all(re.fullmatch(r"test/quiz_\d{3}_0000\.nii\.gz", f) for f in test_images)
    numbers = [re.search(r"_(\d{3})(?:_0000)?\.nii", f).group(1) for f in train + labels]
    assert len(set(numbers)) == 12, "NNN must be unique across the dataset"
    meta = json.loads((small_dataset / "phantoms.json").read_text())
    assert [c["subtype"] for c in meta["cases"]].count(2) == 4
    assert {"spacing_zyx", "header", "storage", "lesion_diameter_mm", "subtype"} <= set(meta["cases"][0])


def test_subtype_table(small_dataset: Path) -> None:
    with (small_dataset / "test_labels" / "subtype_results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["Names", "Subtype"]
    assert sorted(int(r["Subtype"]) for r in rows) == [0, 0, 1, 1, 2, 2]
    meta = {c["case_id"]: c for c in json.loads((small_dataset / "phantoms.json").read_text())["cases"]}
    for row in rows:
        case_id = row["Names"].removesuffix(".nii.gz")
        assert (small_dataset / "test_labels" / row["Names"]).exists()
        assert (small_dataset / "test" / f"{case_id}_0000.nii.gz").exists()
        assert meta[case_id]["subtype"] == int(row["Subtype"])
        mask = np.asarray(nib.load(str(small_dataset / "test_labels" / row["Names"])).dataobj)
        assert set(np.unique(mask).tolist()) == {0, 1, 2}


def test_preview_png(small_dataset: Path) -> None:
    png = small_dataset / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_cli_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--cases-per-subtype", "1", "--splits", "validation,test", "--seed", "4"]
    assert main(["synth", str(tmp_path / "a"), *args]) == 0
    assert "wrote 6 crop phantoms" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "b"), *args, "--workers", "2"]) == 0
    assert main(["synth", str(tmp_path / "c"), *args[:-1], "5"]) == 0
    digest = {}
    for run in "abc":
        root = tmp_path / run
        digest[run] = {f: hashlib.sha256((root / f).read_bytes()).hexdigest()
                       for f in _files(root) if f.endswith(".gz")}
    assert len(digest["a"]) == 12 and "validation/subtype1/quiz_1_002_0000.nii.gz" in digest["a"]
    assert digest["a"] == digest["b"]
    assert set(digest["a"]) == set(digest["c"]) and digest["a"] != digest["c"]
    # a selected part of the plan: the same ids and the same bytes as in the full run, nothing else
    part = synthesize(tmp_path / "d", SynthConfig(cases_per_subtype=1, splits=("validation", "test"), seed=4),
                      select=lambda job: job.subtype == 1)
    got = {f: hashlib.sha256((part / f).read_bytes()).hexdigest() for f in _files(part) if f.endswith(".gz")}
    assert sorted(got) == ["test/quiz_005_0000.nii.gz", "test_labels/quiz_005.nii.gz",
                           "validation/subtype1/quiz_1_002.nii.gz", "validation/subtype1/quiz_1_002_0000.nii.gz"]
    assert got == {f: digest["a"][f] for f in got}


def test_cli_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", str(tmp_path), "--splits", "train,holdout"]) == 1
    assert "holdout" in capsys.readouterr().err
    with pytest.raises(PancreasError, match="cases_per_subtype"):
        synthesize(tmp_path, SynthConfig(cases_per_subtype=0))
