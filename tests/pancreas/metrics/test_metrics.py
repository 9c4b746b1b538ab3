"""Metrics against hand-computed examples (anisotropic spacing, empty masks, outliers, macro-F1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pancreas.metrics import (
    accuracy,
    confusion,
    dice,
    hd95,
    macro_f1,
    nsd,
    per_class_f1,
    segmentation_metrics,
    surface_distances,
)

SPACING = (2.0, 1.0, 1.0)  # mm, numpy (z, y, x) order: thick slices


def _cube(offset: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """A 3x3x3 cube at voxels 2..4 (+ offset) in an 8^3 array."""
    mask = np.zeros((8, 8, 8), dtype=bool)
    z, y, x = (2 + o for o in offset)
    mask[z : z + 3, y : y + 3, x : x + 3] = True
    return mask


def test_cubes_shifted_along_thick_axis() -> None:
    # ref = cube at z 2..4, pred = same cube at z 3..5 (one 2 mm slice up).
    # DSC: overlap 2 slices of 9 = 18 voxels -> 2*18 / (27+27) = 2/3.
    # Boundary of a 3x3x3 cube = 26 voxels (all but the centre).
    # pred -> ref: z=3 layer: 8 voxels on ref's boundary (0 mm) + ref's centre (3,3,3), whose nearest ref
    #   boundary voxel is an in-plane neighbour (1 mm); z=4 layer: 8 boundary voxels, all on ref's top
    #   face (0 mm); z=5 layer: 9 voxels, 1 slice above ref's top face (2 mm).
    #   -> 16 x 0 mm, 1 x 1 mm, 9 x 2 mm; symmetric for ref -> pred.
    # HD95: 95th percentile of 26 sorted values, position 0.95*25 = 23.75, between two 2 mm values -> 2 mm.
    # NSD@2mm: every distance <= 2 -> 1. NSD@1.5mm: (17 + 17) / 52 = 17/26.
    ref, pred = _cube(), _cube((1, 0, 0))
    d_pred, d_ref = surface_distances(pred, ref, SPACING)
    for d in (d_pred, d_ref):
        assert sorted(d.tolist()) == [0.0] * 16 + [1.0] + [2.0] * 9
    assert dice(pred, ref) == pytest.approx(2 / 3)
    assert hd95(pred, ref, SPACING) == pytest.approx(2.0)
    assert nsd(pred, ref, SPACING, 2.0) == pytest.approx(1.0)
    assert nsd(pred, ref, SPACING, 1.5) == pytest.approx(17 / 26)
    padded = [np.pad(m, 10) for m in (pred, ref)]  # far from the array edge: same distances
    assert sorted(surface_distances(*padded, SPACING)[0].tolist()) == sorted(d_pred.tolist())


def test_cubes_shifted_along_fine_axis() -> None:
    # Same shift along x (1 mm): the 9 outside voxels and the old centre are all 1 mm away.
    # -> 16 x 0 mm, 10 x 1 mm each way; HD95 = 1 mm; NSD@1.5mm = 1; NSD@0.5mm = 32/52 = 8/13.
    ref, pred = _cube(), _cube((0, 0, 1))
    d_pred, d_ref = surface_distances(pred, ref, SPACING)
    assert sorted(d_pred.tolist()) == sorted(d_ref.tolist()) == [0.0] * 16 + [1.0] * 10
    assert dice(pred, ref) == pytest.approx(2 / 3)
    assert hd95(pred, ref, SPACING) == pytest.approx(1.0)
    assert nsd(pred, ref, SPACING, 1.5) == pytest.approx(1.0)
    assert nsd(pred, ref, SPACING, 0.5) == pytest.approx(8 / 13)


def test_hd95_ignores_a_single_outlier() -> None:
    # ref: a 1-voxel-thick 10x10 sheet (every voxel is boundary: 100). pred: the sheet plus one voxel 10 mm
    # further along x. pred -> ref: 100 x 0 and 1 x 10 mm; P95 of 101 values = sorted[95] = 0. ref -> pred: 0.
    # HD95 = 0 (the plain Hausdorff distance would be 10). NSD@2 = (100 + 100) / (101 + 100) = 200/201.
    ref = np.zeros((1, 10, 20), dtype=bool)
    ref[0, :, :10] = True
    pred = ref.copy()
    pred[0, 0, 19] = True
    d_pred, _ = surface_distances(pred, ref, (1.0, 1.0, 1.0))
    assert d_pred.max() == pytest.approx(10.0)
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == 0.0
    assert nsd(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(200 / 201)
    assert dice(pred, ref) == pytest.approx(200 / 201)


def test_array_edge_counts_as_background() -> None:
    # Objects touching the array edge: the edge counts as background, so a full 4x4x4 array has 56
    # boundary voxels (64 - 8 interior). pred = the top half (z 0..1): 32 voxels, all boundary.
    ref = np.ones((4, 4, 4), dtype=bool)
    pred = ref.copy()
    pred[2:] = False
    d_pred, d_ref = surface_distances(pred, ref, (3.0, 1.0, 1.0))
    assert d_pred.size == 32 and d_ref.size == 56
    # pred z=1 interior 2x2 voxels are ref interior: nearest ref boundary is in-plane, 1 mm.
    assert sorted(d_pred.tolist()) == [0.0] * 28 + [1.0] * 4
    # ref -> pred: z=0 face (16) and z=1 ring (12) lie on pred's boundary: 0 mm; z=2 ring (12): one 3 mm slice
    # from pred's z=1 layer; z=3 face (16): 6 mm. (z=1..2 centres are ref interior, not boundary.)
    assert sorted(d_ref.tolist()) == [0.0] * 28 + [3.0] * 12 + [6.0] * 16
    # HD95 = max(P95(pred->ref) = 1 (index 29.45 of 32), P95(ref->pred) = 6 (index 52.25 of 56)) = 6 mm
    assert hd95(pred, ref, (3.0, 1.0, 1.0)) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "expected"),
    [
        (True, True, (1.0, 1.0, 0.0)),
        (True, False, (0.0, 0.0, math.nan)),
        (False, True, (0.0, 0.0, math.nan)),
    ],
)
def test_empty_mask_conventions(
    pred_empty: bool, ref_empty: bool, expected: tuple[float, float, float]
) -> None:
    empty, cube = np.zeros((8, 8, 8), dtype=bool), _cube()
    pred, ref = (empty if pred_empty else cube), (empty if ref_empty else cube)
    got = (dice(pred, ref), nsd(pred, ref, SPACING), hd95(pred, ref, SPACING))
    np.testing.assert_equal(got, expected)
    assert [d.size for d in surface_distances(pred, ref, SPACING)] == [0, 0]


def test_segmentation_metrics_regions() -> None:
    # ref: pancreas cube with a lesion voxel at its centre; pred: same pancreas, lesion missed
    # (predicted as pancreas). whole: identical -> 1, 1, 0. lesion: pred empty, ref not -> 0, 0, NaN.
    ref = _cube().astype(np.uint8)
    ref[3, 3, 3] = 2
    pred = _cube().astype(np.uint8)
    m = segmentation_metrics(pred, ref, SPACING)
    assert (m["whole_dsc"], m["whole_nsd2"], m["whole_hd95"]) == (1.0, 1.0, 0.0)
    assert (m["lesion_dsc"], m["lesion_nsd2"]) == (0.0, 0.0) and math.isnan(m["lesion_hd95"])


def test_macro_f1_hand_computed() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # rows = true, cols = predicted
    np.testing.assert_array_equal(confusion(y_true, y_pred, (0, 1, 2)), [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # F1 = 2TP / (2TP + FP + FN): class 0: 2/(2+1+1) = 1/2; class 1: 4/(4+1+0) = 4/5; class 2: 2/(2+0+1) = 2/3
    assert per_class_f1(y_true, y_pred) == pytest.approx({0: 1 / 2, 1: 4 / 5, 2: 2 / 3})
    assert macro_f1(y_true, y_pred) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)  # = 59/90
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_macro_f1_missing_prediction_and_absent_class() -> None:
    # -1 = no prediction: a miss for class 1, no false positive anywhere. Class 2 absent from both -> skipped.
    # class 0: 1.0; class 1: 0/(0+0+1) = 0 -> macro = 0.5
    assert macro_f1([0, 1], [0, -1]) == pytest.approx(0.5)
    np.testing.assert_array_equal(confusion([0, 1], [0, -1], (0, 1, 2)), [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert math.isnan(macro_f1([], []))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="differs from reference shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(_cube(), _cube(), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="y_true has 2 samples but y_pred has 1"):
        macro_f1([0, 1], [0])
