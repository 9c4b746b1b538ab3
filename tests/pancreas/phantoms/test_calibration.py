"""The constants in pancreas.phantoms.calibration are what the real quiz headers say (skips without the data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.nifti import orientation_of
from pancreas.phantoms import calibration as cal
from pancreas.phantoms.distributions import Percentiles


def _canonical_grid(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (z, y, x) size and spacing from the header alone (as pancreas.nifti.canonicalize orders them)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    transpose = orientation_of(reader.GetDirection()).transpose
    size, spacing = np.array(reader.GetSize()[::-1]), np.array(reader.GetSpacing()[::-1])
    return size[list(transpose)], spacing[list(transpose)]


def _matches(values: list[float], table: Percentiles) -> None:
    measured = np.percentile(values, table.levels)
    assert np.allclose(measured, table.values, rtol=1e-3), (table.source, measured.tolist())


def test_spacings_and_extents_match_the_real_headers(quiz_real: Path) -> None:
    masks = sorted((quiz_real / "masks").glob("quiz_*.nii.gz"))
    assert len(masks) == 245
    grids = [_canonical_grid(p) for p in masks]
    sizes = np.array([g[0] for g in grids])
    spacings = np.array([g[1] for g in grids])
    _matches(spacings[:, 0].tolist(), cal.SLICE_MM)
    _matches(spacings[:, 1].tolist(), cal.INPLANE_MM)
    for axis, name in enumerate("zyx"):
        _matches((sizes[:, axis] * spacings[:, axis]).tolist(), cal.EXTENT_MM[name])
    assert (int(sizes[:, 0].min()), int(sizes[:, 0].max())) == cal.SLICES


@pytest.mark.parametrize("subtype", [0, 1, 2])
def test_case_counts_match_the_sources(quiz_real: Path, subtype: int) -> None:
    n = len(list((quiz_real / "masks").glob(f"quiz_{subtype}_*.nii.gz")))
    assert f"n={n})" in cal.PARENCHYMA_ML[subtype].source
