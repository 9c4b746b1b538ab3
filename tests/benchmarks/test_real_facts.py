"""benchmarks.real_facts on tiny volumes whose volumes and HU are known, and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.real_facts import hu_facts, mask_facts, percentiles, render, summarize_hu, summarize_masks

SPACING_XYZ = (0.5, 0.5, 2.0)  # voxel 0.5 mm3


def _write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS: canonicalized on read
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """40 x 80 x 80 voxels: a 10 x 20 x 20 gland (label 1, 100 HU) holding a 4 x 10 x 10 lesion (label 2,
    40 HU) in fat (-100 HU) reaching 5-6 mm past the gland, then water (0 HU). Mask labels stored as floats like 1.0000153."""
    mask = np.zeros((40, 80, 80), np.float32)
    mask[15:25, 30:50, 30:50] = 1.0000153
    mask[18:22, 35:45, 35:45] = 2.0000153
    hu = np.zeros(mask.shape, np.int16)
    hu[12:28, 20:60, 20:60] = -100
    hu[np.rint(mask) == 1] = 100
    hu[np.rint(mask) == 2] = 40
    return _write(hu, tmp_path / "quiz_1_007_0000.nii.gz"), _write(mask, tmp_path / "quiz_1_007.nii.gz")


def test_mask_facts(pair: tuple[Path, Path]) -> None:
    facts = mask_facts(pair[1])
    assert facts.subtype == 1 and facts.shape_zyx == (40, 80, 80) and facts.spacing_zyx == (2.0, 0.5, 0.5)
    assert facts.lesion_ml == pytest.approx(400 * 0.5 / 1000)
    assert facts.pancreas_ml == pytest.approx(4000 * 0.5 / 1000)
    assert facts.parenchyma_ml == pytest.approx(3600 * 0.5 / 1000)
    assert facts.extent_mm == (80.0, 40.0, 40.0)
    with pytest.raises(ValueError, match="not a quiz mask name"):
        mask_facts(pair[0])


def test_hu_facts(pair: tuple[Path, Path]) -> None:
    facts = hu_facts(*pair, clipped=False, subtype=1)
    assert (facts.pancreas.median, facts.lesion.median) == (100.0, 40.0)
    assert facts.fat.median == -100.0
    assert facts.shell.median == -100.0 and facts.shell_fat_fraction == 1.0
    clipped = hu_facts(*pair, clipped=True, subtype=1)
    assert clipped.fat is None and clipped.shell_fat_fraction is None and clipped.shell_low_fraction == 1.0


def test_summaries_and_report(pair: tuple[Path, Path]) -> None:
    masks = summarize_masks([mask_facts(pair[1])])
    hu = summarize_hu([hu_facts(*pair, clipped=True, subtype=1)])
    assert masks["by_subtype"][1]["lesion_ml"]["p50"] == 0.2
    assert hu["lesion_minus_pancreas"]["p0"] == -60.0
    assert percentiles([1.0, 3.0]) == {"p0": 1.0, "p5": 1.1, "p10": 1.2, "p25": 1.5, "p50": 2.0, "p75": 2.5,
                                       "p90": 2.8, "p95": 2.9, "p100": 3.0}
    text = render({"masks": masks, "rebuilt_subtype2": hu, "unclipped": []}, "python -m benchmarks.real_facts")
    assert text.startswith("# Facts measured") and "`python -m benchmarks.real_facts`" in text
    assert "| subtype 1: lesion 2 (n=1) | mL |" in text
