"""Multi-scale test-time augmentation: one pass per target-spacing factor, probabilities averaged."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from pancreas.engine import Engine, EngineConfig, mean_log_probabilities
from pancreas.engine_config import class_weight_list, scale_list
from pancreas.errors import PancreasError
from pancreas.prediction import tta_scales
from pancreas.testing import with_inference

SPACING = (2.0, 1.5, 1.5)


def cpu(**options) -> EngineConfig:
    return EngineConfig(backend="torch", device="cpu", postprocess=False, **options)


def test_mean_log_probabilities_is_the_log_of_the_mean_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g) * 5
    mean = (torch.softmax(a, 0) + torch.softmax(b, 0)) / 2
    out = mean_log_probabilities([a, b])
    torch.testing.assert_close(torch.softmax(out, 0), mean)
    torch.testing.assert_close(out.exp(), mean)
    assert torch.isfinite(mean_log_probabilities([torch.tensor([[100.0], [-100.0], [-100.0]])] * 2)).all()


def test_two_scales_average_the_passes_and_keep_the_grid(bundle, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((20, 40, 44), seed=5), SPACING)
    one, coarse = Engine.from_bundle(bundle, cpu()), Engine.from_bundle(bundle, cpu(scales=(1.5,)))
    both = Engine.from_bundle(bundle, cpu(scales=(1.0, 1.5)))
    assert one.scales == (1.0,) and both.info["scales"] == [1.0, 1.5]
    p_one, p_coarse, p_both = one.predict_soft(vol), coarse.predict_soft(vol), both.predict_soft(vol)
    assert p_both.probabilities.shape == (3, *vol.array.shape)
    assert np.abs(p_one.probabilities - p_coarse.probabilities).max() > 1e-3  # the coarse pass differs
    np.testing.assert_allclose(p_both.probabilities, (p_one.probabilities + p_coarse.probabilities) / 2, atol=1e-5)
    np.testing.assert_allclose(p_both.class_probabilities, p_one.class_probabilities)  # the first pass's subtype
    pred = both.predict(vol)
    assert pred.mask.shape == vol.array.shape
    agree = pred.mask == np.argmax(p_both.probabilities, 0)
    assert agree.mean() > 0.999  # the same argmax (up to float ties)
    # every pass is timed into the same stages
    assert {"preprocess", "inference", "resample_back"} <= set(pred.timings_ms)


def test_bundle_records_scales_and_config_overrides_them(bundle, make_ct, make_volume, tmp_path) -> None:
    vol = make_volume(make_ct((16, 32, 32), seed=3), SPACING)
    recorded = with_inference(bundle, tmp_path / "scaled", scales=[1.0, 1.5])
    follows = Engine.from_bundle(recorded, cpu())
    assert follows.scales == (1.0, 1.5)
    np.testing.assert_allclose(follows.predict_soft(vol).probabilities,
                               Engine.from_bundle(bundle, cpu(scales=(1.0, 1.5))).predict_soft(vol).probabilities,
                               atol=1e-6)
    single = Engine.from_bundle(recorded, cpu(scales=(1.0,)))
    np.testing.assert_array_equal(single.predict(vol).mask, Engine.from_bundle(bundle, cpu()).predict(vol).mask)
    for bad in ([], [0.0], [1.0, 9.0], "x", [1.0, None]):
        broken = with_inference(bundle, tmp_path / f"broken{len(list(tmp_path.iterdir()))}", scales=bad)
        with pytest.raises(PancreasError, match="scales"):
            Engine.from_bundle(broken, cpu())


def test_scale_options_are_checked() -> None:
    assert scale_list("1, 1.25") == (1.0, 1.25)
    for bad in ("", "0", "1,5", "a,b", "-1"):
        with pytest.raises(ValueError, match="target-spacing factors"):
            scale_list(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="'a,b': scales are"):  # argparse shows it verbatim
        scale_list("a,b")
    assert class_weight_list("1,1,4") == (1.0, 1.0, 4.0)
    for bad in ("", "0", "a", "1,-1"):
        with pytest.raises(ValueError, match="class weights are comma-separated positive"):
            class_weight_list(bad)
    for bad in ((), (0.0,), (1.0, 4.5)):
        with pytest.raises(PancreasError, match="scales"):
            EngineConfig(scales=bad)
    assert EngineConfig(scales=[1, 1.25]).scales == (1, 1.25)  # a JSON list becomes the frozen config's tuple
    assert tta_scales({}, EngineConfig()) == (1.0,)
    assert tta_scales({"scales": [1, 1.25]}, EngineConfig()) == (1.0, 1.25)
    assert tta_scales({"scales": [1, 1.25]}, EngineConfig(scales=(1.0,))) == (1.0,)


def test_every_scale_is_held_to_the_grid_limits(bundle, make_ct, make_volume) -> None:
    """A factor under 1 makes a finer grid: the resampled-grid bound refuses it before any pass runs."""
    from pancreas.errors import InvalidImageError
    from pancreas.grid import GridLimits

    vol = make_volume(make_ct((16, 32, 32), seed=3), SPACING)  # 16 384 voxels on the plans' grid
    limits = GridLimits(max_voxels=40_000, free_voxels=1)
    assert Engine.from_bundle(bundle, cpu(grid_limits=limits)).check_input(vol) == (16, 32, 32)
    fine = Engine.from_bundle(bundle, cpu(grid_limits=limits, scales=(1.0, 0.5)))  # 8x the voxels
    with pytest.raises(InvalidImageError, match="over the limit"):
        fine.predict(vol)
