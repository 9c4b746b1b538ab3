"""nnU-Net's own predictor, given our weights through SegmentationView, segments like our engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.nnunet_baseline import NnUNetBaseline, NnUNetSettings, state_dicts
from pancreas.engine import Engine, EngineConfig


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_nnunet_predictor_gets_our_weights(bundle, other_bundle, cases: Path, tmp_path: Path) -> None:
    image = next(cases.glob("*_0000.nii.gz"))
    same = NnUNetSettings(use_mirroring=False, tile_step_size=0.5)
    times = NnUNetBaseline(bundle, same).predict_file(image, tmp_path / "nnunet.nii.gz")
    NnUNetBaseline(other_bundle, same).predict_file(image, tmp_path / "nnunet_other.nii.gz")
    engine = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cpu", tta=False, step_size=0.5,
                                                     coarse_to_fine=False, postprocess=False))
    engine.predict_file(image, tmp_path / "engine.nii.gz")

    ours, theirs, control = (_labels(tmp_path / f) for f in ("engine.nii.gz", "nnunet.nii.gz",
                                                             "nnunet_other.nii.gz"))
    assert ours.shape == theirs.shape == _labels(image).shape
    assert set(times) == {"read_preprocess", "sliding_window", "resample_export"}
    assert all(t > 0 for t in times.values())
    # the random net predicts all three labels, so agreement is not trivially high
    assert len(np.unique(theirs)) == 3
    assert (ours == theirs).mean() > 0.98
    # negative control: other weights through the same wrapper give a different segmentation
    assert (control == theirs).mean() < 0.9


def test_state_dicts_match_the_view_keys(bundle) -> None:
    from pancreas.network import SegmentationView, build_network

    view = SegmentationView(build_network(bundle.plans, bundle.metadata.network))
    (params,) = state_dicts(bundle)
    assert set(params) == set(view.state_dict())
    view.load_state_dict(params)  # strict


def test_warmup_runs_nnunets_own_predict_path(bundle, monkeypatch) -> None:
    """Warm-up goes through predict_logits_from_preprocessed_data (every fold, TTA, autocast on CUDA)."""
    baseline = NnUNetBaseline(bundle, NnUNetSettings())
    seen: list[tuple[int, ...]] = []
    original = baseline.predictor.predict_sliding_window_return_logits

    def spy(x):
        seen.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(baseline.predictor, "predict_sliding_window_return_logits", spy)
    baseline.warmup()
    patch = tuple(baseline.configuration_manager.patch_size)
    assert seen == [(1, *patch)] * len(baseline.predictor.list_of_parameters)
