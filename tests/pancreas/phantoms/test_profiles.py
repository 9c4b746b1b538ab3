"""Sampling profiles: ``classic`` is bit-identical to the generator before profiles existed; ``quiz`` draws
cases whose measured volumes, HU and spacings fall within what was measured on the real quiz data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.cli import main
from pancreas.errors import PancreasError
from pancreas.phantoms import PhantomCase, SynthConfig, make_case, synthesize
from pancreas.phantoms import calibration as cal
from pancreas.phantoms.anatomy import draw_anatomy, draw_pancreas
from pancreas.phantoms.case import full_grid
from pancreas.phantoms.profiles import PROFILES

#: sha256 of image + mask arrays, geometry and meta (without "profile"), computed before profiles were added
CLASSIC_CASES = {
    (0, 0, "varied"): "f4043623c63966dc7b30b5c8c770f25867a2e201d6d33db2f4dc969e5b704117",
    (1, 1, "canonical"): "4282875f248ad3fcc990029da1d5ff5bddaf1ebb27fd224e4678f50e49b33f88",
    (2, 2, "varied"): "7de9011608dbf5dc94675e2e64ce29a459fccd5b6bf765680a4dc0172daf8f87",
}
#: the same for the full-CT grids of draw_anatomy seeds 0-5, and for synthesize(validation, seed 7) on disk
CLASSIC_FULL_GRIDS = "4c8d6835096dc375b8e66446a2e07885b0608df42051646b398c34d00ceb11fc"
CLASSIC_SYNTH = "18742e43cc87684659cfa511e9e3175b7952f106d4a7b9f42dfd15d4819af616"

QUIZ_SEEDS = [(100 + i, i % 3) for i in range(12)]


def _case_digest(case: PhantomCase) -> str:
    h = hashlib.sha256()
    for image in (case.image, case.mask):
        a = sitk.GetArrayFromImage(image)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
        h.update(repr((image.GetSpacing(), image.GetOrigin(), image.GetDirection())).encode())
    meta = {k: v for k, v in case.meta.items() if k != "profile"}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("key", list(CLASSIC_CASES))
def test_classic_cases_are_bit_identical(key: tuple[int, int, str]) -> None:
    seed, subtype, headers = key
    case = make_case(seed, subtype, headers=headers)
    assert case.meta["profile"] == "classic"
    assert _case_digest(case) == CLASSIC_CASES[key]
    assert _case_digest(make_case(seed, subtype, headers=headers, profile="classic")) == CLASSIC_CASES[key]


def test_classic_full_grids_are_unchanged() -> None:
    grids = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        g = full_grid(rng, draw_anatomy(rng, draw_pancreas(rng)))
        grids.append(repr((g.shape, g.spacing, g.origin)))
    assert hashlib.sha256("".join(grids).encode()).hexdigest() == CLASSIC_FULL_GRIDS


def test_classic_synthesize_is_bit_identical(tmp_path: Path) -> None:
    synthesize(tmp_path, SynthConfig(cases_per_subtype=1, splits=("validation",), seed=7))
    h = hashlib.sha256()
    for p in sorted(tmp_path.rglob("*.nii.gz")):
        nii = nib.load(str(p))
        raw = np.asarray(nii.dataobj.get_unscaled())
        h.update(p.name.encode())
        h.update(str(raw.dtype).encode())
        h.update(raw.tobytes())
        h.update(np.round(nii.affine, 6).tobytes())
        h.update(repr(nii.header.get_slope_inter()).encode())
    assert h.hexdigest() == CLASSIC_SYNTH
    assert json.loads((tmp_path / "phantoms.json").read_text())["config"]["profile"] == "classic"


def _facts(case: PhantomCase) -> dict[str, float]:
    """What benchmarks.real_facts measures on the real data, on one phantom."""
    image = sitk.GetArrayFromImage(case.image).astype(np.float32)
    mask = sitk.GetArrayFromImage(case.mask)
    ml = float(np.prod(case.mask.GetSpacing())) / 1000.0
    p25, p50, p75 = np.percentile(image[mask == 1], (25, 50, 75))
    fat = image[(image >= -190) & (image <= -30)]
    sz, sxy = case.meta["spacing_zyx"][:2]
    return {"parenchyma_ml": np.count_nonzero(mask == 1) * ml, "lesion_ml": np.count_nonzero(mask == 2) * ml,
            "pancreas_hu": float(p50), "pancreas_iqr": float(p75 - p25),
            "lesion_minus_pancreas": float(np.median(image[mask == 2]) - p50), "fat_hu": float(np.median(fat)),
            "slice_mm": sz, "inplane_mm": sxy, "slices": case.meta["size_zyx"][0]}


@pytest.fixture(scope="module")
def quiz_facts() -> list[tuple[int, dict[str, float]]]:
    return [(subtype, _facts(make_case(seed, subtype, headers="canonical", profile="quiz")))
            for seed, subtype in QUIZ_SEEDS]


@pytest.fixture(scope="module")
def classic_facts() -> list[tuple[int, dict[str, float]]]:
    return [(subtype, _facts(make_case(seed, subtype, headers="canonical"))) for seed, subtype in QUIZ_SEEDS]


def _within(value: float, bounds: tuple[float, float], slack: float = 0.0) -> bool:
    return bounds[0] - slack <= value <= bounds[1] + slack


def test_quiz_volumes_within_real_ranges(quiz_facts: list) -> None:
    for subtype, f in quiz_facts:
        assert _within(f["parenchyma_ml"], cal.PARENCHYMA_ML[subtype].range), (subtype, f)
        assert _within(f["lesion_ml"], cal.LESION_ML[subtype].range), (subtype, f)
        assert _within(f["parenchyma_ml"] + f["lesion_ml"], cal.PANCREAS_ML[subtype].range), (subtype, f)
    lesions = [f["lesion_ml"] for _, f in quiz_facts]
    assert max(lesions) > 10.0, "quiz lesions reach the real upper quartiles (classic rarely exceeds 20 mm)"


def test_quiz_hu_within_real_ranges(quiz_facts: list, classic_facts: list) -> None:
    fat_lo = min(q25 for _, q25, _ in cal.FAT_HU.values())
    fat_hi = max(q75 for _, _, q75 in cal.FAT_HU.values())
    for subtype, f in quiz_facts:
        assert _within(f["pancreas_hu"], cal.PANCREAS_HU.range), f
        assert _within(f["fat_hu"], (fat_lo, fat_hi)), f
        assert _within(f["pancreas_iqr"], cal.PANCREAS_IQR_HU.range), f
        if subtype == 2:
            assert _within(f["lesion_minus_pancreas"], cal.LESION2_MINUS_PANCREAS_HU.range), f
    iqr = np.median([f["pancreas_iqr"] for _, f in quiz_facts])
    assert _within(iqr, (cal.PANCREAS_IQR_HU.at(10), cal.PANCREAS_IQR_HU.at(90))), iqr
    assert np.median([f["pancreas_iqr"] for _, f in classic_facts]) < cal.PANCREAS_IQR_HU.range[0], \
        "classic noise is below the real spread: the check above must be able to fail"
    assert np.median([f["fat_hu"] for _, f in classic_facts]) < fat_lo + 3, "classic fat is darker than real"


def test_quiz_spacings_within_real_ranges(quiz_facts: list) -> None:
    for _, f in quiz_facts:
        assert _within(f["slice_mm"], cal.SLICE_MM.range), f
        assert _within(f["inplane_mm"], cal.INPLANE_MM.range), f
        assert _within(f["slices"], cal.SLICES), f


def test_quiz_distributions_cover_the_real_spacing_range() -> None:
    rng = np.random.default_rng(0)
    crop = PROFILES["quiz"].fov["crop"]
    slices = np.array([crop.slice_mm.sample(rng) for _ in range(4000)])
    inplane = np.array([crop.inplane_mm.sample(rng) for _ in range(4000)])
    assert slices.min() < 0.6 and slices.max() > 6.0 and abs(np.median(slices) - cal.SLICE_MM.median) < 0.15
    assert inplane.min() < 0.45 and inplane.max() > 0.93
    assert abs(np.median(inplane) - cal.INPLANE_MM.median) < 0.01
    extent = np.array([crop.extent.draw(rng) for _ in range(2000)])  # (x, y, z) mm
    for axis, name in ((2, "z"), (1, "y"), (0, "x")):
        assert abs(np.median(extent[:, axis]) - cal.EXTENT_MM[name].median) < 0.05 * cal.EXTENT_MM[name].median
        assert _within(extent[:, axis].min(), cal.EXTENT_MM[name].sampled, 1e-6)


def test_quiz_is_deterministic_and_differs_from_classic() -> None:
    a, b = make_case(7, 2, profile="quiz"), make_case(7, 2, profile="quiz")
    assert np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(b.image))
    assert a.meta == b.meta and a.meta["profile"] == "quiz"
    assert a.meta != {**make_case(7, 2).meta, "profile": "quiz"}


def test_unknown_profile_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(PancreasError, match="profile 'real' is unknown; use one of \\['classic', 'quiz'\\]"):
        make_case(0, 0, profile="real")
    with pytest.raises(PancreasError, match="profile 'real' is unknown"):
        SynthConfig(profile="real")
    assert main(["synth", str(tmp_path / "x"), "--profile", "real"]) == 1
    assert "profile 'real' is unknown; use one of ['classic', 'quiz']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_quiz_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "quiz"
    assert main(["synth", str(out), "--profile", "quiz", "--cases-per-subtype", "1", "--splits", "test"]) == 0
    assert "(quiz profile)" in capsys.readouterr().out
    summary = json.loads((out / "phantoms.json").read_text())
    assert summary["config"]["profile"] == "quiz"
    assert [c["profile"] for c in summary["cases"]] == ["quiz"] * 3
    for case in summary["cases"]:
        assert _within(case["spacing_zyx"][0], cal.SLICE_MM.range)
        assert (out / case["image"]).is_file() and (out / case["mask"]).is_file()
