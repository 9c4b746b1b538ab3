"""Properties of single phantom cases: labels, lesion, HU, determinism, geometry of the field of view."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pancreas.errors import PancreasError
from pancreas.phantoms import PhantomCase, make_case
from pancreas.phantoms.anatomy import draw_anatomy, draw_pancreas
from pancreas.phantoms.case import full_grid
from pancreas.phantoms.tissues import TISSUES, Phase, T

SEEDS = [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    return [make_case(seed, subtype, headers="canonical") for seed, subtype in SEEDS]


def _arrays(case: PhantomCase) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(case.image).astype(np.float32), sitk.GetArrayFromImage(case.mask)


def test_labels_lesion_inside_pancreas(cases: list[PhantomCase]) -> None:
    for case in cases:
        _, mask = _arrays(case)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1, 2}
        lesion = mask == 2
        gland = ndimage.binary_dilation(mask == 1, iterations=2)
        filled = ndimage.binary_fill_holes(gland)
        assert filled[lesion].all(), "the lesion must lie inside the (dilated) pancreas"
        shell = ndimage.binary_dilation(lesion) & ~lesion
        assert (mask[shell] == 0).mean() < 0.2, "the lesion should be surrounded by pancreas"
        assert ndimage.label(lesion)[1] == 1


def test_lesion_diameter_range(cases: list[PhantomCase]) -> None:
    for case in cases:
        _, mask = _arrays(case)
        voxel = float(np.prod(case.mask.GetSpacing()))
        measured = np.cbrt(6 * np.count_nonzero(mask == 2) * voxel / np.pi)
        assert 4.5 <= measured <= 35.5
        assert 5 <= case.meta["lesion_diameter_mm"] <= 35
        assert abs(measured - case.meta["lesion_measured_diameter_mm"]) < 0.05


def test_subtype_appearance_differs(cases: list[PhantomCase]) -> None:
    """Lesion minus pancreas HU: solid lesions darker than the gland, cysts near water."""
    for case in cases:
        image, mask = _arrays(case)
        pancreas, lesion = np.median(image[mask == 1]), np.median(image[mask == 2])
        assert 60 <= pancreas <= 125
        if case.subtype == 0:
            assert -75 < lesion - pancreas < -8
        elif case.subtype == 1:
            assert lesion < 60


def test_tissue_hu_ranges() -> None:
    rng = np.random.default_rng(0)
    phases = [Phase.draw(rng) for _ in range(200)]
    hu = np.stack([p.hu for p in phases])
    assert np.all(np.abs(hu[:, T.FAT] + 100) <= 20)
    assert hu[:, T.ARTERY].min() >= 150 and hu[:, T.ARTERY].max() <= 250
    assert hu[:, T.BONE_CORTEX].max() <= 1000 and hu[:, T.BONE_MARROW].min() >= 300
    for organ in (T.LIVER, T.SPLEEN, T.KIDNEY_CORTEX):
        assert 40 <= hu[:, organ].min() and hu[:, organ].max() <= 180
    assert 40 <= hu[:, T.PANCREAS].min() and hu[:, T.PANCREAS].max() <= 120
    assert hu[:, T.LIVER].std() > 5, "contrast phase must vary between cases"
    assert set(TISSUES) == set(T)


def test_image_hu_of_air_bone_and_vessels(cases: list[PhantomCase]) -> None:
    image, _ = _arrays(cases[0])
    assert image.min() >= -1024 and image.max() <= 3071
    assert np.percentile(image, 99.9) > 300, "bone or contrast-filled vessels should be in the crop"
    assert np.percentile(image, 1) < -80, "fat (or gas) should surround the organs"


def test_determinism() -> None:
    a, b, c = make_case(21, 1), make_case(21, 1), make_case(22, 1)
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    assert np.array_equal(sitk.GetArrayFromImage(a.mask), sitk.GetArrayFromImage(b.mask))
    assert a.image.GetDirection() == b.image.GetDirection() and a.meta == b.meta
    assert a.image.GetSize() != c.image.GetSize() or not np.array_equal(
        sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(c.image))


def test_anatomy_independent_of_spacing() -> None:
    """The same anatomy drawn on two grids of different spacing has the same pancreas volume (mm3)."""
    from pancreas.phantoms.anatomy import paint
    from pancreas.phantoms.geometry import Grid

    rng = np.random.default_rng(5)
    anatomy = draw_anatomy(rng, draw_pancreas(rng))
    volumes = []
    for spacing in ((1.0, 0.6, 0.6), (2.5, 0.9, 0.9)):
        shape = tuple(round(e / s) for e, s in zip((120, 90, 160), spacing))
        grid = Grid(shape=shape, spacing=spacing, origin=(-70.0, -35.0, -60.0))
        _, pancreas = paint(grid, anatomy)
        volumes.append(pancreas.sum() * np.prod(spacing))
    assert volumes[0] > 20_000
    assert abs(volumes[0] - volumes[1]) / volumes[0] < 0.05


def test_full_field_of_view() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        anatomy = draw_anatomy(rng, draw_pancreas(rng))
        grid = full_grid(rng, anatomy)
        assert grid.shape[1:] == (512, 512) and 80 <= grid.shape[0] <= 300
        assert 0.6 <= grid.spacing[1] == grid.spacing[2] <= 0.9 and 0.7 <= grid.spacing[0] <= 5


@pytest.mark.parametrize("kwargs", [{"subtype": 3}, {"subtype": 0, "shape": "huge"},
                                    {"subtype": 0, "headers": "weird"}])
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(PancreasError, match="use one of|not one of"):
        make_case(0, **kwargs)
