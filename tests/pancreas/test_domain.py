"""Input domain: ranges measured from real NIfTI files, each warning triggered and not, engines using it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.bundle import METADATA, Bundle, default_bundle_path
from pancreas.domain import (
    DEFAULT_PANCREAS_ML,
    WARNING_CODES,
    InputDomain,
    InputWarning,
    measure,
    record_domain,
)
from pancreas.engine import Engine, EngineConfig
from pancreas.ensemble_engine import ensemble_of
from pancreas.errors import BundleError, DatasetError
from pancreas.nifti import canonicalize, read_volume
from pancreas.testing import OBLIQUE_DIRECTION, ct_array, write_case, write_nifti

#: Training crops as recorded by an exporter (z, y, x); the quiz crops are about 128 x 87 x 130 mm.
CROPS = {"spacing_mm": {"min": [1.0, 0.6, 0.6], "max": [3.0, 1.0, 1.0]},
         "extent_mm": {"max": [140.0, 150.0, 120.0]}, "pancreas_ml": {"min": 40.0, "max": 120.0}}


def volume(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]):
    image = sitk.Image([int(n) for n in shape_zyx[::-1]], sitk.sitkInt16)
    image.SetSpacing([float(s) for s in spacing_zyx[::-1]])
    return canonicalize(image)


def codes(warnings: list[InputWarning]) -> list[str]:
    return [w.code for w in warnings]


# ---- the domain record ---------------------------------------------------------------------------------
def test_warning_codes_are_the_defined_ones() -> None:
    assert InputWarning("fov", "m").to_json() == {"code": "fov", "message": "m"}
    with pytest.raises(ValueError, match="unknown warning code 'nope'"):
        InputWarning("nope", "m")
    assert set(WARNING_CODES) == {"fov", "spacing", "pancreas_volume", "empty_pancreas", "small_lesion"}


def test_from_training_data_round_trip() -> None:
    assert InputDomain.from_training_data({}) is None
    assert InputDomain.from_training_data({"sources": {"phantom": 72}}) is None
    domain = InputDomain.from_training_data({"domain": {**CROPS, "written_by": "a newer exporter"}})
    assert domain is not None and domain.extent_mm.max == (140.0, 150.0, 120.0)
    assert InputDomain.from_training_data({"domain": domain.to_json()}) == domain
    assert "written_by" not in domain.to_json() and domain.to_json()["axes"] == "zyx"


@pytest.mark.parametrize("bad,where", [
    ({"spacing_mm": {"min": [1.0, 0.6], "max": [3.0, 1.0, 1.0]}}, "spacing_mm.min"),
    ({"spacing_mm": {"min": [4.0, 0.6, 0.6], "max": [3.0, 1.0, 1.0]}}, "spacing_mm"),
    ({"extent_mm": {"max": [-1.0, 150.0, 120.0]}}, "extent_mm"),
    ({"pancreas_ml": {"min": 90.0, "max": 40.0}}, "pancreas_ml"),
    ({"axes": "xyz"}, "axes"),
])
def test_malformed_domain_is_a_bundle_error(bad: dict, where: str) -> None:
    with pytest.raises(BundleError, match=f"malformed at {where}") as info:
        InputDomain.from_training_data({"domain": bad})
    assert info.value.code == "bundle_corrupt"


# ---- measure ---------------------------------------------------------------------------------------------
def test_measure_reads_canonical_ranges_from_files(tmp_path: Path) -> None:
    # a: identity header; b: voxel axes permuted/flipped and tilted, so its file order is not z, y, x
    a = write_case(tmp_path / "a.nii.gz", (30, 40, 50), (0.8, 0.8, 2.0),
                        mask_path=tmp_path / "a_m.nii.gz")
    b = write_case(tmp_path / "b.nii.gz", (20, 60, 44), (0.7, 0.9, 3.0), OBLIQUE_DIRECTION, seed=1,
                        mask_path=tmp_path / "b_m.nii.gz")
    assert read_volume(b).spacing == pytest.approx((3.0, 0.7, 0.9))  # canonical z, y, x
    quiz_like = sitk.ReadImage(str(tmp_path / "b_m.nii.gz"))  # real quiz masks store 1.0000153
    float_mask = sitk.Cast(quiz_like, sitk.sitkFloat32) * 1.0000153
    float_mask.CopyInformation(quiz_like)
    sitk.WriteImage(float_mask, str(tmp_path / "b_m.nii.gz"))

    domain = measure([a, b], [tmp_path / "a_m.nii.gz", tmp_path / "b_m.nii.gz"])
    assert domain.n_cases == 2
    assert domain.spacing_mm.min == pytest.approx((2.0, 0.7, 0.8))
    assert domain.spacing_mm.max == pytest.approx((3.0, 0.8, 0.9))
    # a: 60 x 32 x 40 mm; b: 60 x 30.8 x 54 mm (its canonical y is the file's x axis: 44 voxels of 0.7 mm)
    assert domain.extent_mm.min == pytest.approx((60.0, 44 * 0.7, 50 * 0.8))
    assert domain.extent_mm.max == pytest.approx((60.0, 40 * 0.8, 60 * 0.9))
    expected = [np.count_nonzero(ct_array(s, seed)[1]) * np.prod(sp) / 1000
                for s, sp, seed in (((30, 40, 50), (0.8, 0.8, 2.0), 0), ((20, 60, 44), (0.7, 0.9, 3.0), 1))]
    assert (domain.pancreas_ml.min, domain.pancreas_ml.max) == pytest.approx((min(expected), max(expected)))
    as_volumes = measure([read_volume(a), read_volume(b)], [read_volume(tmp_path / "a_m.nii.gz")])
    assert as_volumes.spacing_mm == domain.spacing_mm and as_volumes.extent_mm == domain.extent_mm
    assert measure([a]).pancreas_ml is None


def test_measure_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="at least one"):
        measure([])
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DatasetError, match="broken.nii.gz"):
        measure([bad])
    prob = tmp_path / "prob.nii.gz"
    write_nifti(prob, np.full((4, 5, 6), 0.5, dtype=np.float32), {"spacing": (1, 1, 1), "origin": (0, 0, 0),
                                                                    "direction": np.eye(3).ravel()})
    with pytest.raises(DatasetError, match="prob.nii.gz: mask values are not integers"):
        measure([prob], [prob])


# ---- check_input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,spacing,warned", [
    ((50, 50, 50), (2.0, 2.0, 2.0), False),   # 100 mm cube: a crop
    ((70, 75, 60), (3.0, 3.0, 3.0), False),   # exactly 1.5x the largest training crop: still fine
    ((50, 50, 61), (2.0, 2.0, 3.0), True),    # 183 mm on x only: > 1.5 x 120 mm
    ((100, 127, 140), (3.0, 3.0, 3.0), True),  # a whole abdomen
])
def test_fov_warning(shape, spacing, warned: bool) -> None:
    domain = InputDomain.model_validate({"extent_mm": CROPS["extent_mm"]})
    found = domain.check_input(volume(shape, spacing))
    assert codes(found) == (["fov"] if warned else [])
    if warned:
        extent = "x".join(f"{n * s:.0f}" for n, s in zip(shape, spacing))
        assert f"field of view {extent} mm (z,y,x)" in found[0].message
        assert "at most 140x150x120 mm" in found[0].message and "crop the CT" in found[0].message


@pytest.mark.parametrize("spacing,bad_axes", [
    ((2.0, 0.8, 0.8), None),
    ((3.75, 1.25, 0.45), None),  # on the edges of the range widened by 25 %
    ((3.8, 0.8, 0.8), "z"),
    ((2.0, 0.44, 1.3), "y/x"),
])
def test_spacing_warning(spacing, bad_axes: str | None) -> None:
    domain = InputDomain.model_validate({"spacing_mm": CROPS["spacing_mm"]})
    found = domain.check_input(volume((8, 8, 8), spacing))
    assert codes(found) == ([] if bad_axes is None else ["spacing"])
    if bad_axes:
        assert f"on axis {bad_axes} " in found[0].message
        assert "trained z 1.00-3.00, y 0.60-1.00, x 0.60-1.00 mm" in found[0].message


def test_without_a_domain_inputs_are_not_judged() -> None:
    assert InputDomain().check_input(volume((100, 127, 140), (3.0, 3.0, 9.0))) == []


# ---- check_prediction ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ml,code,phrase", [
    (0.0, "empty_pancreas", "no pancreas was found"),
    (DEFAULT_PANCREAS_ML[0] - 1, "pancreas_volume", "partly missed"),
    (DEFAULT_PANCREAS_ML[0], None, None),
    (70.0, None, None),
    (DEFAULT_PANCREAS_ML[1], None, None),
    (DEFAULT_PANCREAS_ML[1] + 50, "pancreas_volume", "leaked"),
])
def test_pancreas_volume_default_range(ml: float, code: str | None, phrase: str | None) -> None:
    found = InputDomain().check_prediction({"pancreas": ml, "lesion": 10.0})
    assert codes(found) == ([code] if code else [])
    if code == "pancreas_volume":
        assert f"{ml:.1f} mL" in found[0].message and "20-700 mL (anatomical default)" in found[0].message
    if phrase:
        assert phrase in found[0].message


@pytest.mark.parametrize("ml,warned", [(29.0, True), (30.0, False), (150.0, False), (151.0, True)])
def test_pancreas_volume_recorded_range(ml: float, warned: bool) -> None:
    domain = InputDomain.model_validate({"pancreas_ml": CROPS["pancreas_ml"]})  # 40-120 mL, +-25 %
    found = domain.check_prediction({"pancreas": ml, "lesion": 10.0})
    assert codes(found) == (["pancreas_volume"] if warned else [])
    if warned:
        assert "range 30-150 mL (training masks 40-120 mL, +-25%)" in found[0].message


@pytest.mark.parametrize("ml,phrase", [(0.0, "no lesion was predicted, under 3 mL"),
                                       (1.234, "the predicted lesion is 1.23 mL, under 3 mL"),
                                       (3.0, None), (12.0, None)])
def test_small_lesion_warning(ml: float, phrase: str | None) -> None:
    found = InputDomain().check_prediction({"pancreas": 70.0, "lesion": ml})
    assert codes(found) == (["small_lesion"] if phrase else [])
    if phrase:
        assert phrase in found[0].message and "small lesions are the ones such models miss" in found[0].message
    off = InputDomain.model_validate({"tolerance": {"small_lesion_ml": 0.0}})
    assert off.check_prediction({"pancreas": 70.0, "lesion": ml}) == []
    empty = InputDomain().check_prediction({"pancreas": 0.0, "lesion": ml})
    assert codes(empty) == ["empty_pancreas"]  # no gland: its own warning says it all


def test_small_lesion_warning_quotes_the_recorded_sensitivity(tiny_bundle: Bundle) -> None:
    """The demo bundle records its recipe's out-of-fold lesion bins; the warning quotes those under 3 mL."""
    demo = InputDomain.from_bundle(Bundle.load(default_bundle_path()))
    bins = Bundle.load(default_bundle_path()).metadata.metrics["real_recipe_cv_lesion_by_size"]
    under = [b for b in bins if b["high_ml"] is not None and b["high_ml"] <= 3.0]
    seen = demo.lesion_sensitivity
    assert seen is not None and seen.n == sum(b["n"] for b in under) > 0
    assert seen.found == round(sum(b["found"] * b["n"] for b in under))
    message = demo.check_prediction({"pancreas": 70.0, "lesion": 0.0})[0].message
    assert (f"its recipe's fold models, out of fold on real CT, found {seen.found} of {seen.n} lesions under 3 mL"
            in message)
    assert InputDomain.from_bundle(tiny_bundle).lesion_sensitivity is None  # records no such metric
    wider = InputDomain.model_validate({"tolerance": {"small_lesion_ml": 5.0}})  # a bundle's own limit
    assert codes(wider.check_prediction({"pancreas": 70.0, "lesion": 4.0})) == ["small_lesion"]


def test_lesion_bins_that_do_not_parse_are_ignored() -> None:
    from pancreas.lesion_size import found_below

    assert found_below([{"high_ml": 1.0, "n": 4, "found": 0.25}, {"high_ml": 3.0, "n": 2, "found": 0.5},
                        {"high_ml": None, "n": 9, "found": 1.0}], 3.0) == (2, 6)
    assert found_below([{"high_ml": 1.0, "n": 0, "found": None}], 3.0) is None
    assert found_below([{"high_ml": "x", "n": 1, "found": 1}], 3.0) is None
    assert found_below([{"n": 1}], 3.0) is None


# ---- bundles and engines ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "demo_bundle"
    shutil.copytree(default_bundle_path(), root)
    return root


def test_record_domain_rewrites_a_copy(demo_copy: Path) -> None:
    original = (default_bundle_path() / METADATA).read_bytes()
    domain = InputDomain.model_validate(CROPS)
    bundle = record_domain(demo_copy, domain)
    assert Bundle.load(demo_copy).metadata.training_data["domain"] == domain.to_json()
    assert InputDomain.from_training_data(bundle.metadata.training_data) == domain
    assert (default_bundle_path() / METADATA).read_bytes() == original


@pytest.mark.usefixtures("few_threads")
def test_engine_warns_from_its_bundle_domain(demo_copy: Path, with_domain, tmp_path: Path) -> None:
    crop = write_case(tmp_path / "crop.nii.gz", (40, 60, 80), (1.5, 1.5, 2.0), OBLIQUE_DIRECTION)
    measured = measure([crop])  # this very crop is the whole "training set"
    narrow = {"extent_mm": {"max": [40.0, 40.0, 40.0]}}  # a domain the crop is far outside of
    plain = Bundle.load(default_bundle_path())
    for domain, expect_fov in ((measured.to_json(), False), (narrow, True)):
        engine = Engine.from_bundle(with_domain(plain, domain), EngineConfig())
        pred = engine.predict_file(crop, tmp_path / "pred.nii.gz")
        assert ("fov" in codes(pred.warnings)) is expect_fov, pred.warnings
        assert "spacing" not in codes(pred.warnings)
        assert pred.warnings == engine.domain.check(read_volume(crop), pred.volumes_ml)
        assert engine.domain.lesion_sensitivity is not None  # from the demo bundle's recorded lesion bins


@pytest.mark.usefixtures("few_threads")
def test_configuration_ensemble_reports_each_warning_once(tiny_bundle: Bundle, with_domain,
                                                          tmp_path: Path) -> None:
    big = read_volume(write_case(tmp_path / "big.nii.gz", (30, 36, 40), (8.0, 8.0, 8.0)))  # 240x288x320
    crops = with_domain(tiny_bundle, {"extent_mm": CROPS["extent_mm"]})
    pred = ensemble_of([Engine.from_bundle(crops, EngineConfig(batch_size=4))] * 2).predict(big)
    assert codes(pred.warnings).count("fov") == 1, pred.warnings
    plain = ensemble_of([Engine.from_bundle(tiny_bundle, EngineConfig(batch_size=4))]).predict(big)
    assert "fov" not in codes(plain.warnings)


@pytest.mark.slow
def test_real_whole_abdomen_ct_gets_the_fov_warning(real_ct: Path, demo_copy: Path, tmp_path: Path) -> None:
    """The real TotalSegmentator CT (366 x 303 x 336 mm) sent to the demo model trained on pancreas crops."""
    bundle = record_domain(demo_copy, InputDomain.model_validate(CROPS))
    # TTA off: this checks the warning, and the bundle's TTA default costs minutes per whole-abdomen CT on a CPU
    pred = Engine.from_bundle(bundle, EngineConfig(tta=False)).predict_file(real_ct, tmp_path / "pred.nii.gz")
    fov = [w for w in pred.warnings if w.code == "fov"]
    assert fov and "field of view 336x303x366 mm (z,y,x)" in fov[0].message, pred.warnings
