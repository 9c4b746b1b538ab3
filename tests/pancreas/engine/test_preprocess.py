"""Preprocessing parity against nnunetv2's own DefaultPreprocessor and export resampling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import (
    determine_do_sep_z_and_axis,
    resample_data_or_seg_to_shape,
)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas.preprocess import (
    PreprocessPlan,
    ResampleSpec,
    logits_to_crop,
    nonzero_bbox,
    paste_canonical,
    preprocess,
    resample,
    separate_z_axis,
)

# Tolerances (normalized intensity units, i.e. plan std's): torch Catmull-Rom cubic vs scipy cubic B-spline.
MEAN_ABS_TOL = 0.05
CORR_MIN = 0.99


def nnunet_preprocess(img: np.ndarray, spacing: tuple, plans: dict) -> tuple[np.ndarray, dict]:
    pm = PlansManager(copy.deepcopy(plans))
    cm = pm.get_configuration("3d_fullres")
    data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        img[None].copy(), None, {"spacing": list(spacing)}, pm, cm, {"labels": {"background": 0, "pancreas": 1}})
    return data[0], props


@pytest.mark.parametrize("shape,spacing,transpose", [
    ((40, 64, 80), (2.5, 0.8, 0.8), [0, 1, 2]),    # anisotropic source: separate z (order 0 along z)
    ((30, 60, 70), (1.6, 0.73, 0.73), [0, 1, 2]),  # isotropic-ish: 3D cubic
    ((30, 60, 70), (1.6, 0.73, 0.73), [2, 0, 1]),  # plans with a non-trivial transpose_forward
    ((24, 40, 40), (1.0, 1.0, 1.0), [0, 1, 2]),    # upsampling
])
def test_preprocessing_matches_nnunet(make_ct, make_plans, shape, spacing, transpose) -> None:
    plans = make_plans()
    plans["transpose_forward"], plans["transpose_backward"] = transpose, list(np.argsort(transpose))
    img = make_ct(shape)
    img[:, :4] = 0  # a zero border nnU-Net crops away
    img[:, -3:] = 0
    ref, props = nnunet_preprocess(img, spacing, plans)
    ours = preprocess(img, spacing, PreprocessPlan.from_plans(plans, "3d_fullres"))
    out = ours.data[0].numpy()
    assert out.shape == ref.shape
    assert [list(b) for b in ours.bbox] == [list(b) for b in props["bbox_used_for_cropping"]]
    assert tuple(ours.shape_before_crop) == tuple(props["shape_before_cropping"])
    mad = float(np.abs(out - ref).mean())
    corr = float(np.corrcoef(out.ravel(), ref.ravel())[0, 1])
    assert mad < MEAN_ABS_TOL and corr > CORR_MIN, (mad, corr)
    assert abs(out.min() - ref.min()) < 0.2 and abs(out.max() - ref.max()) < 0.2  # clipped like skimage


def test_no_resampling_is_exact_normalization(make_ct, make_plans) -> None:
    plans = make_plans(spacing=(2.0, 1.5, 1.5))
    img = make_ct((20, 30, 30))
    ref, _ = nnunet_preprocess(img, (2.0, 1.5, 1.5), plans)
    out = preprocess(img, (2.0, 1.5, 1.5), PreprocessPlan.from_plans(plans, "3d_fullres")).data[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_nonzero_bbox_matches_hole_filled_crop() -> None:
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    arr = np.zeros((12, 14, 16), np.float32)
    arr[2:9, 3:12, 4:10] = 5
    arr[4:6, 5:8, 6:8] = 0  # a hole
    _, _, bbox = crop_to_nonzero(arr[None].copy())
    assert [list(b) for b in nonzero_bbox(arr)] == [list(b) for b in bbox]
    assert nonzero_bbox(np.zeros((3, 4, 5))) == ((0, 3), (0, 4), (0, 5))


@pytest.mark.parametrize("spacing,new_spacing,force", [
    ((3.5, 0.8, 0.8), (1.0, 1.0, 1.0), None), ((1, 1, 1), (4, 1, 1), None), ((1, 1, 1), (1.2, 1, 1), None),
    ((0.8, 0.8, 3.0), (1, 1, 1), None), ((2.0, 0.5, 0.5), (1, 1, 1), True), ((5.0, 1, 1), (1, 1, 1), False),
    ((0.24, 1.25, 1.25), (1, 1, 1), None),
])
def test_separate_z_rule_matches_nnunet(spacing, new_spacing, force) -> None:
    do_sep, axis = determine_do_sep_z_and_axis(force, spacing, new_spacing)
    ours = separate_z_axis(ResampleSpec(3, 0, force), spacing, new_spacing)
    assert ours == (axis if do_sep else None)


@pytest.mark.parametrize("spacing,target", [((2.5, 0.8, 0.8), (2.0, 1.5, 1.5)), ((1.6, 0.7, 0.7), (2.0, 1.5, 1.5))])
def test_probability_resampling_matches_nnunet(spacing, target) -> None:
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter

    logits = gaussian_filter(rng.normal(size=(3, 20, 30, 36)), (0, 2, 2, 2)).astype(np.float32)
    shape = (25, 56, 70)
    ref = resample_data_or_seg_to_shape(logits, shape, target, spacing, is_seg=False, order=1, order_z=0,
                                        force_separate_z=None)
    ours = resample(torch.from_numpy(logits), shape, target, spacing, ResampleSpec(1, 0, None)).numpy()
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).mean()) < 0.01 * float(np.abs(ref).mean()) + 1e-3
    assert (ours.argmax(0) == ref.argmax(0)).mean() > 0.97


def test_export_matches_nnunet_export(make_ct, make_plans) -> None:
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    plans = make_plans()
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    plan = PreprocessPlan.from_plans(plans, "3d_fullres")
    img = make_ct((20, 36, 44))
    img[:, :, :5] = 0
    spacing = (2.5, 0.8, 0.9)
    pre = preprocess(img, spacing, plan)
    _, props = nnunet_preprocess(img, spacing, plans)
    body = (pre.data > -3).float()  # logits that encode "is body"
    logits = torch.cat([1 - body, body, torch.zeros_like(body)]) * 10
    crop = logits_to_crop(logits, pre, plan)
    assert tuple(crop.shape[1:]) == pre.shape_after_crop
    mask = paste_canonical(crop.argmax(0).numpy().astype(np.uint8), pre, plan)
    pm = PlansManager(copy.deepcopy(plans))
    cm = pm.get_configuration("3d_fullres")
    ref = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), pm, cm, pm.get_label_manager({"labels": {"background": 0, "a": 1, "b": 2}}), props)
    assert mask.shape == ref.shape == img.shape
    assert (mask == ref).mean() > 0.995
    truth = img > -500
    truth[:, :, :5] = False
    assert (mask.astype(bool) == truth).mean() > 0.95
    assert not mask[:, :, :5].any()  # the cropped-away border stays background


@pytest.mark.parametrize("spacing,target", [((0.8, 0.8, 3.0), (1.5, 1.5, 2.0)), ((0.7, 2.8, 0.7), (1.0, 2.0, 1.0)),
                                            ((1.0, 1.0, 1.0), (1.0, 1.0, 4.0))])
def test_data_resampling_with_separate_axis_anywhere(make_ct, spacing, target) -> None:
    img = make_ct((24, 30, 28))[None] / 100.0
    shape = tuple(round(s / t * n) for s, t, n in zip(spacing, target, img.shape[1:]))
    ref = resample_data_or_seg_to_shape(img.astype(np.float64), shape, spacing, target, is_seg=False, order=3,
                                        order_z=0, force_separate_z=None)
    ours = resample(torch.from_numpy(img), shape, spacing, target, ResampleSpec(3, 0, None), clip=True).numpy()
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).mean()) < 0.05 * float(img.std())
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
