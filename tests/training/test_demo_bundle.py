"""The committed demo bundle: loads, is small, records phantom_* metrics, and `pancreas predict` +
`pancreas evaluate` on the regenerated validation phantoms reproduce them within 0.01."""

from __future__ import annotations

import pytest

from pancreas.bundle import Bundle, default_bundle_path

RECORDED = ("phantom_whole_dsc", "phantom_lesion_dsc", "phantom_macro_f1")


def test_demo_bundle_loads_and_records_phantom_metrics() -> None:
    from training.export import bundle_size_mb

    bundle = Bundle.load(default_bundle_path())
    assert bundle_size_mb(bundle.root) <= 25
    folds = [a.fold for a in bundle.artifacts("torch")]
    assert folds == ["all"]  # one model trained on every case (nnU-Net's fold all)
    assert [a.fold for a in bundle.artifacts("onnx", "fp32")] == folds  # parity-gated ONNX twin
    metrics = bundle.metadata.metrics
    assert all(0.0 <= metrics[k] <= 1.0 for k in RECORDED)
    assert metrics["phantom_whole_dsc"] >= 0.85  # it must still segment the phantoms `pancreas demo` makes
    # its real-data estimate: the same recipe's five fold models, each real case scored by the one that held it out
    assert 0.0 <= metrics["real_recipe_cv_whole_dsc"] <= 1.0 and metrics["real_recipe_cv_n_cases"] == 60
    assert metrics["phantom_recipe_cv_n_cases"] == 45
    assert "5-fold" in metrics["recipe_cv_scope"] and not any(k.startswith("real_oof_") for k in metrics)
    assert bundle.metadata.inference["postprocessing"] == {"min_component_fraction": 0.3, "max_piece_distance_mm": 30.0}
    assert metrics["folds"]["all"]["held_out"] is False  # its own training-case scores are marked as such
    assert bundle.metadata.inference["tta"] is True and bundle.metadata.inference["class_weights"] == [1.0, 1.0, 4.0]
    assert "phantom" in bundle.metadata.description.lower() and "real" in bundle.metadata.description.lower()


@pytest.mark.slow
def test_demo_bundle_reproduces_recorded_metrics(tmp_path) -> None:
    from pancreas.phantoms import SynthConfig, synthesize
    from training.export import phantom_metrics

    bundle = Bundle.load(default_bundle_path())
    # the documented data command: pancreas synth ... --cases-per-subtype 24 --splits train,validation --seed 2026
    synthesize(tmp_path / "phantoms", SynthConfig(cases_per_subtype=24, splits=("train", "validation"), seed=2026))
    # recorded with torch; the bundle's parity-gated ONNX folds (what `pancreas demo` serves) are ~2.5x faster
    measured = phantom_metrics(bundle.root, tmp_path / "phantoms" / "validation", tmp_path / "work", threads=2,
                               backend="onnxruntime")
    for key in RECORDED:
        assert measured[key] == pytest.approx(bundle.metadata.metrics[key], abs=0.01), key
