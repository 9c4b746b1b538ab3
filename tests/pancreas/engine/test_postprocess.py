"""Post-processing on hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest

from pancreas.errors import PancreasError
from pancreas.postprocess import PostprocessConfig, postprocess


def base() -> np.ndarray:
    m = np.zeros((20, 30, 30), np.uint8)
    m[5:15, 5:20, 5:20] = 1  # the pancreas
    m[8:11, 8:11, 8:11] = 2  # a lesion inside it
    return m


def test_keeps_largest_whole_pancreas_component() -> None:
    m = base()
    m[1:3, 25:28, 25:28] = 1  # small stray pancreas blob
    m[16:19, 25:28, 1:3] = 2  # stray lesion blob far away
    out = postprocess(m, (1.0, 1.0, 1.0))
    expected = base()
    np.testing.assert_array_equal(out, expected)
    assert m[1, 25, 25] == 1  # input untouched


def test_lesion_within_margin_is_kept_far_one_removed() -> None:
    m = base()
    m[5:8, 21:23, 8:10] = 2  # 2 voxels (2 mm) from the pancreas: not connected, but adjacent
    m[5:8, 27:29, 8:10] = 2  # 8 mm away
    out = postprocess(m, (1.0, 1.0, 1.0), PostprocessConfig(lesion_margin_mm=3.0))
    assert (out[5:8, 21:23, 8:10] == 2).all()
    assert (out[5:8, 27:29, 8:10] == 0).all()
    out = postprocess(m, (1.0, 1.0, 1.0), PostprocessConfig(lesion_margin_mm=1.0))
    assert (out[5:8, 21:23, 8:10] == 0).all()


def test_margin_is_in_millimetres() -> None:
    m = base()
    m[5:8, 22:24, 8:10] = 2  # 3 voxels away along y
    assert (postprocess(m, (1.0, 1.0, 1.0), PostprocessConfig(lesion_margin_mm=2.5))[5:8, 22:24, 8:10] == 0).all()
    assert (postprocess(m, (1.0, 0.5, 1.0), PostprocessConfig(lesion_margin_mm=2.5))[5:8, 22:24, 8:10] == 2).all()


def test_lesion_rule_without_largest_component() -> None:
    m = base()
    m[1:3, 25:28, 25:28] = 1
    m[16:19, 25:28, 1:3] = 2
    out = postprocess(m, (1, 1, 1), PostprocessConfig(largest_component=False))
    assert (out[1:3, 25:28, 25:28] == 1).all()  # pancreas blobs stay
    assert (out[16:19, 25:28, 1:3] == 0).all()  # lonely lesion goes


def test_only_lesion_is_left_alone_and_empty_is_fine() -> None:
    m = np.zeros((10, 10, 10), np.uint8)
    assert postprocess(m, (1, 1, 1)).sum() == 0
    m[2:5, 2:5, 2:5] = 2
    np.testing.assert_array_equal(postprocess(m, (1, 1, 1)), m)


def test_disabled_is_identity_and_metadata_options() -> None:
    m = base()
    m[1:3, 25:28, 25:28] = 1
    off = PostprocessConfig(largest_component=False, lesion_near_pancreas=False)
    np.testing.assert_array_equal(postprocess(m, (1, 1, 1), off), m)
    cfg = PostprocessConfig.from_metadata({"postprocessing": {"lesion_margin_mm": 5.0}})
    assert cfg.lesion_margin_mm == 5.0 and cfg.largest_component
    assert PostprocessConfig.from_metadata({}) == PostprocessConfig()
    with pytest.raises(PancreasError, match="bogus"):
        PostprocessConfig.from_metadata({"postprocessing": {"bogus": 1}})


def test_min_component_fraction_keeps_gland_pieces_but_lesions_follow_the_largest() -> None:
    m = base()  # largest component: 10 x 15 x 15 = 2250 voxels
    m[5:15, 23:28, 5:20] = 1  # a second piece of the gland, 750 voxels (1/3 of the largest), 3 voxels away
    m[16:20, 25:28, 25:28] = 1  # a small stray blob, 36 voxels
    m[10:12, 24:26, 10:12] = 2  # a lesion inside the second piece, 5 mm from the largest component
    largest_only = postprocess(m, (1.0, 1.0, 1.0))
    assert (largest_only[5:15, 23:28, 5:20] == 0).all()  # today's rule drops the second piece
    kept = postprocess(m, (1.0, 1.0, 1.0), PostprocessConfig(min_component_fraction=0.3))
    second = np.zeros_like(m, dtype=bool)
    second[5:15, 23:28, 5:20] = True
    second[10:12, 24:26, 10:12] = False
    assert (kept[second] == 1).all()  # >= 0.3 x the largest: kept
    assert (kept[16:20, 25:28, 25:28] == 0).all()  # the stray blob is still removed
    assert (kept[10:12, 24:26, 10:12] == 0).all()  # lesions still refer to the largest component
    np.testing.assert_array_equal(kept[:, :21], largest_only[:, :21])  # the largest component is unchanged
    assert (postprocess(m, (1.0, 1.0, 1.0), PostprocessConfig(min_component_fraction=0.5))[second] == 0).all()
    for bad in (0.0, 1.5, "x"):
        with pytest.raises(PancreasError, match="min_component_fraction"):
            PostprocessConfig(min_component_fraction=bad)
    assert PostprocessConfig.from_metadata(
        {"postprocessing": {"min_component_fraction": 0.3}}).min_component_fraction == 0.3


def _two_pieces() -> tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...]]:
    """The largest piece (10x15x15 = 2250 voxels) plus a near piece (750 voxels, 3 voxels away) and a far piece
    (900 voxels, 15 voxels away along x), both at least 0.3 x the largest."""
    m = np.zeros((20, 40, 60), np.uint8)
    m[5:15, 5:20, 5:20] = 1
    near = (slice(5, 15), slice(23, 28), slice(5, 20))
    far = (slice(5, 15), slice(5, 11), slice(35, 50))
    m[near] = 1
    m[far] = 1
    return m, near, far


def test_pieces_limited_by_distance_in_millimetres() -> None:
    m, near, far = _two_pieces()
    spacing = (1.0, 1.0, 1.0)
    every = postprocess(m, spacing, PostprocessConfig(min_component_fraction=0.3))
    assert (every[near] == 1).all() and (every[far] == 1).all()
    close = postprocess(m, spacing, PostprocessConfig(min_component_fraction=0.3, max_piece_distance_mm=10.0))
    assert (close[near] == 1).all() and (close[far] == 0).all()  # 4 mm kept, 16 mm dropped
    # the same voxels with 0.5 mm in-plane spacing: the far piece is 8 mm away and stays
    half = postprocess(m, (1.0, 0.5, 0.5), PostprocessConfig(min_component_fraction=0.3, max_piece_distance_mm=10.0))
    assert (half[far] == 1).all()
    np.testing.assert_array_equal(close[:, :, :21], every[:, :, :21])  # the largest and the near piece unchanged


def test_pieces_capped_by_total_volume_largest_first() -> None:
    m, near, far = _two_pieces()  # 1 mm voxels: 2.25 mL + 0.75 mL (near) + 0.9 mL (far)
    cfg = PostprocessConfig(min_component_fraction=0.3, max_total_ml=3.3)
    out = postprocess(m, (1.0, 1.0, 1.0), cfg)
    assert (out[far] == 1).all() and (out[near] == 0).all()  # the bigger piece fits first, then the cap is reached
    tight = postprocess(m, (1.0, 1.0, 1.0), PostprocessConfig(min_component_fraction=0.3, max_total_ml=2.0))
    np.testing.assert_array_equal(tight, postprocess(m, (1.0, 1.0, 1.0)))  # the largest alone is over: no piece
    for name in ("max_piece_distance_mm", "max_total_ml"):
        for bad in (0, -1.0, "x", True):
            with pytest.raises(PancreasError, match=name):
                PostprocessConfig(**{name: bad})
    assert PostprocessConfig.from_metadata({"postprocessing": {"min_component_fraction": 0.3,
                                                               "max_piece_distance_mm": 30}}).max_piece_distance_mm == 30


def test_engine_caps_pieces_at_the_training_domain() -> None:
    """The engine fills ``max_total_ml`` from the bundle's training domain unless the bundle records one."""
    from pancreas.domain import InputDomain
    from pancreas.engine_config import EngineConfig
    from pancreas.prediction import post_config

    domain = InputDomain.model_validate({"pancreas_ml": {"min": 30.0, "max": 160.0}})
    inference = {"postprocessing": {"min_component_fraction": 0.3}}
    assert post_config(inference, EngineConfig(), domain).max_total_ml == pytest.approx(200.0)
    assert post_config(inference, EngineConfig(), InputDomain()).max_total_ml == 700.0  # the anatomical default
    recorded = {"postprocessing": {"min_component_fraction": 0.3, "max_total_ml": 90.0}}
    assert post_config(recorded, EngineConfig(), domain).max_total_ml == 90.0
    assert post_config({}, EngineConfig(), domain).max_total_ml is None  # largest component only: nothing to cap
    assert post_config(inference, EngineConfig(postprocess=False), domain) is None
