"""Fixtures for the benchmark tests: random-weight bundles and tiny real NIfTI cases on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.testing import make_random_bundle, tiny_plans

#: plans' target spacing is (z, y, x) = (2.0, 1.5, 1.5); SimpleITK spacing is (x, y, z)
TARGET_SPACING_XYZ = (1.5, 1.5, 2.0)


def write_case(folder: Path, case_id: str, shape_zyx: tuple[int, int, int], *, seed: int = 0,
               spacing_xyz: tuple[float, float, float] = TARGET_SPACING_XYZ) -> Path:
    """A CT-like int16 volume with a bright blob (+ its mask 0/1/2) in canonical LPS orientation."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    c = [s / 2 for s in shape_zyx]
    r2 = ((z - c[0]) / (shape_zyx[0] / 4)) ** 2 + ((y - c[1]) / (shape_zyx[1] / 4)) ** 2 + \
        ((x - c[2]) / (shape_zyx[2] / 4)) ** 2
    mask = np.where(r2 < 1, 1, 0).astype(np.uint8)
    mask[r2 < 0.3] = 2
    image = rng.normal(-100, 40, shape_zyx) + 200.0 * (mask == 1) + 60.0 * (mask == 2)
    folder.mkdir(parents=True, exist_ok=True)
    for array, name in ((image.astype(np.int16), f"{case_id}_0000.nii.gz"), (mask, f"{case_id}.nii.gz")):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(spacing_xyz)
        sitk.WriteImage(img, str(folder / name))
    return folder / f"{case_id}_0000.nii.gz"


@pytest.fixture(scope="session")
def case_writer():
    """:func:`write_case`, for tests that need their own cases."""
    return write_case


@pytest.fixture(scope="session")
def small_plans() -> dict:
    """Tiny plans with a small patch so that CPU runs take a second."""
    return tiny_plans(patch_size=(16, 32, 32), features=(4, 8, 16))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, small_plans: dict):
    return make_random_bundle(tmp_path_factory.mktemp("bundle"), seed=0, plans=small_plans)


@pytest.fixture(scope="session")
def coarse_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A 4 mm network: a crop-size phantom is one or two patches (keeps nnU-Net's TTA run short)."""
    plans = tiny_plans(patch_size=(16, 32, 32), spacing=(4.0, 4.0, 4.0), features=(4, 8, 16))
    return make_random_bundle(tmp_path_factory.mktemp("bundle_coarse"), seed=0, plans=plans)


@pytest.fixture(scope="session")
def other_bundle(tmp_path_factory: pytest.TempPathFactory, small_plans: dict):
    """Same architecture, different random weights (negative control)."""
    return make_random_bundle(tmp_path_factory.mktemp("bundle_other"), seed=7, plans=small_plans)


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder with one tiny case (several patches wide, at the plans' spacing)."""
    folder = tmp_path_factory.mktemp("cases")
    write_case(folder, "tiny_001", (24, 48, 56), seed=1)
    return folder
