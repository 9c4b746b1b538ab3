"""`pancreas predict`: the warnings of each case land in predictions.json and in the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pancreas.cli import main
from pancreas.testing import OBLIQUE_DIRECTION, write_case

pytestmark = pytest.mark.usefixtures("few_threads")

#: Training crops of at most 140 x 150 x 120 mm (z, y, x), 0.5-4 mm voxels.
DOMAIN = {"spacing_mm": {"min": [0.5, 0.5, 0.5], "max": [4.0, 4.0, 4.0]},
          "extent_mm": {"max": [140.0, 150.0, 120.0]}}


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_case(folder / "crop_0000.nii.gz", (24, 32, 32), (3.0, 3.0, 4.0))  # 96 x 96 x 96 mm
    # file axes (z, y, x) 80 x 96 x 104 voxels, but the oblique header swaps y and x: canonical 320x416x384 mm
    write_case(folder / "abdomen_0000.nii.gz", (80, 96, 104), (4.0, 4.0, 4.0), OBLIQUE_DIRECTION)
    return folder


def _predict(images: Path, bundle: Path, out: Path) -> dict:
    assert main(["predict", "-i", str(images), "-o", str(out), "--model", str(bundle), "--batch-size", "4"]) == 0
    return json.loads((out / "predictions.json").read_text())["cases"]


def test_predictions_json_holds_the_warnings(cases: Path, tiny_bundle, with_domain, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pancreas.predict")
    found = _predict(cases, with_domain(tiny_bundle, DOMAIN).root, tmp_path / "out")
    for case in found.values():
        assert all(set(w) == {"code", "message"} for w in case["warnings"])
    fov = [w for w in found["abdomen"]["warnings"] if w["code"] == "fov"]
    assert len(fov) == 1 and "field of view 320x416x384 mm (z,y,x)" in fov[0]["message"]
    assert "fov" not in [w["code"] for w in found["crop"]["warnings"]]
    assert "spacing" not in [w["code"] for c in found.values() for w in c["warnings"]]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"abdomen: {fov[0]['message']}" in logged
    assert not any(m.startswith("crop: field of view") for m in logged)


def test_no_domain_no_input_warnings(cases: Path, tiny_bundle, tmp_path: Path) -> None:
    found = _predict(cases, tiny_bundle.root, tmp_path / "out")
    for case in found.values():  # only the checks of the result run (the random model's output is noise)
        assert {w["code"] for w in case["warnings"]} <= {"pancreas_volume", "empty_pancreas", "small_lesion"}
