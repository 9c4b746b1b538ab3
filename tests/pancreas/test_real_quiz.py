"""The committed demo bundle on the real quiz data (read from ../shared/data/quiz-real; never committed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.bundle import Bundle, default_bundle_path
from pancreas.nifti import same_grid
from pancreas.testing import QUIZ_REAL

QUIZ = QUIZ_REAL
needs_quiz = pytest.mark.skipif(not (QUIZ / "test").is_dir(),
                                reason=f"real quiz data not found at {QUIZ} (unlicensed, never committed)")


def test_demo_bundle_names_its_training_data() -> None:
    """Per task, what the demo model was trained on; the licence note; the input domain for warnings."""
    data = Bundle.load(default_bundle_path()).metadata.training_data
    assert data["tasks"]["classification"]["trained_on"] == ["phantom"]
    assert set(data["tasks"]["segmentation"]["trained_on"]) == {"real", "phantom"}
    assert data["sources"]["real"] == 60 and data["sources"]["phantom"] > 0
    assert "licence" in data["licence"].lower() and "domain" in data


@needs_quiz
@pytest.mark.slow
def test_real_test_images_through_predict(tmp_path) -> None:
    """All 20 real test images: a mask on each input's exact grid, subtypes in the CSV, volumes recorded.

    Without TTA (about 6x faster here): the service's test sends the same images through the bundle's defaults."""
    from pancreas.cli import main

    images = sorted((QUIZ / "test").glob("*_0000.nii.gz"))
    assert main(["predict", "-i", str(QUIZ / "test"), "-o", str(tmp_path / "pred"), "--threads", "2",
                 "--no-tta"]) == 0
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(summary["cases"]) == len(images) == 20
    for path in images:
        case = path.name[: -len("_0000.nii.gz")]
        mask = sitk.ReadImage(str(tmp_path / "pred" / f"{case}.nii.gz"))
        assert same_grid(mask, sitk.ReadImage(str(path)), tol=1e-5), case
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1, 2}
    volumes = [c["volumes_ml"]["pancreas"] for c in summary["cases"].values()]
    assert np.median(volumes) < 300.0, volumes
