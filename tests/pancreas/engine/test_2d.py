"""nnU-Net's 2d configuration: preprocessing, slice-by-slice sliding window and the engine, against nnunetv2."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas.backends import create_backend
from pancreas.backends.slices import SliceBackend
from pancreas.backends.tensorrt_build import TrtBuildConfig, profile_batches
from pancreas.bundle import Bundle
from pancreas.engine import Engine, EngineConfig
from pancreas.grid import GridLimits, check_grid
from pancreas.network import SegmentationView
from pancreas.patch import SLICE_BATCH_FACTOR
from pancreas.preprocess import PreprocessPlan, logits_to_crop, paste_canonical, preprocess
from pancreas.sliding_window import WindowConfig, compute_steps, gaussian_importance, sliding_window
from pancreas.testing import make_random_bundle, tiny_plans

PATCH_2D = (32, 32)
LABELS_JSON = {"labels": {"background": 0, "pancreas": 1, "lesion": 2}}


def plans_2d(spacing: tuple[float, float] = (1.5, 1.5), transpose: list[int] | None = None) -> dict:
    plans = tiny_plans(configuration="2d", patch_size=PATCH_2D, spacing=spacing, features=(4, 8, 16))
    if transpose is not None:
        plans["transpose_forward"], plans["transpose_backward"] = transpose, [int(i) for i in np.argsort(transpose)]
    return plans


@pytest.fixture(scope="module")
def bundle_2d(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_random_bundle(tmp_path_factory.mktemp("b2d") / "b", seed=1, configuration="2d", plans=plans_2d())


def nnunet_preprocess(img: np.ndarray, spacing: tuple, plans: dict) -> tuple[np.ndarray, dict]:
    pm = PlansManager(copy.deepcopy(plans))
    data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        img[None].copy(), None, {"spacing": list(spacing)}, pm, pm.get_configuration("2d"), LABELS_JSON)
    return data[0], props


@pytest.mark.parametrize("spacing,transpose", [((2.5, 0.8, 0.8), [0, 1, 2]), ((0.8, 2.5, 0.7), [1, 0, 2])])
def test_2d_preprocessing_keeps_the_slice_spacing_like_nnunet(make_ct, spacing, transpose) -> None:
    plans = plans_2d(transpose=transpose)
    img = make_ct((18, 40, 44))
    ref, _ = nnunet_preprocess(img, spacing, plans)
    plan = PreprocessPlan.from_plans(plans, "2d")
    ours = preprocess(img, spacing, plan)
    assert plan.is_2d and plan.target_spacing == (1.5, 1.5)
    sp = [spacing[i] for i in transpose]
    assert ours.target_spacing == (sp[0], 1.5, 1.5)  # the first transposed axis keeps the case's spacing
    assert ours.data.shape[1:] == ref.shape and ours.data.shape[1] == img.shape[transpose[0]]
    out = ours.data[0].numpy()
    assert float(np.abs(out - ref).mean()) < 0.05 and float(np.corrcoef(out.ravel(), ref.ravel())[0, 1]) > 0.99


def test_2d_export_matches_nnunet_export(make_ct) -> None:
    plans = plans_2d(transpose=[1, 0, 2])
    plan = PreprocessPlan.from_plans(plans, "2d")
    img = make_ct((14, 30, 36))
    spacing = (2.5, 0.8, 0.9)
    pre = preprocess(img, spacing, plan)
    _, props = nnunet_preprocess(img, spacing, plans)
    body = (pre.data > -3).float()
    logits = torch.cat([1 - body, body, torch.zeros_like(body)]) * 10
    mask = paste_canonical(logits_to_crop(logits, pre, plan).argmax(0).numpy().astype(np.uint8), pre, plan)
    pm = PlansManager(copy.deepcopy(plans))
    ref = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), pm, pm.get_configuration("2d"), pm.get_label_manager(LABELS_JSON), props)
    assert mask.shape == ref.shape == img.shape
    assert (mask == ref).mean() > 0.995


def test_grid_check_counts_every_slice() -> None:
    plan = PreprocessPlan.from_plans(plans_2d(spacing=(2.0, 2.0)), "2d")
    assert check_grid((7, 40, 30), (5.0, 1.0, 1.0), plan, GridLimits()) == (7, 20, 15)
    assert plan.with_spacing_factor(2.0).spacing_for((5.0, 1.0, 1.0)) == (5.0, 4.0, 4.0)


def test_unit_patch_axis_tiles_every_slice_with_nnunets_2d_gaussian() -> None:
    steps = compute_steps((5, 70, 33), (1, 32, 32), 0.5)
    assert steps == [[0, 1, 2, 3, 4], *compute_steps_for_sliding_window((70, 33), PATCH_2D, 0.5)]
    ref = compute_gaussian(PATCH_2D, 1 / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
    torch.testing.assert_close(gaussian_importance((1, *PATCH_2D))[0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,tta", [((5, 45, 70), False), ((3, 20, 40), True)])  # (3, 20, 40): in-plane padding
def test_2d_sliding_window_matches_nnunet_predictor(bundle_2d, shape, tta) -> None:
    """Our slice-by-slice window (via the backend adapter) == nnU-Net's own 2D sliding window."""
    backend = create_backend(bundle_2d, EngineConfig(backend="torch", device="cpu"))
    assert isinstance(backend, SliceBackend) and backend.patch_size == (1, *PATCH_2D)
    pm = PlansManager(copy.deepcopy(bundle_2d.plans))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, device=torch.device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    predictor.manual_initialization(SegmentationView(backend.inner.network), pm, pm.get_configuration("2d"),
                                    None, bundle_2d.dataset, "MultiTaskTrainer", (0, 1))
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    theirs = predictor.predict_sliding_window_return_logits(image.clone())
    calls: list[tuple[int, ...]] = []
    hook = backend.inner.network.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    try:
        ours = sliding_window(image, backend, WindowConfig(patch_size=backend.patch_size, tta=tta, batch_size=2))
    finally:
        hook.remove()
    assert ours.logits.shape == theirs.shape == (3, *shape)
    diff = (ours.logits - theirs.float()).abs()  # nnU-Net accumulates in float16: ~1e-2 at its blending scale
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 1e-3, (float(diff.max()), float(diff.mean()))
    assert all(len(c) == 4 for c in calls)  # the 2D network only ever sees [B, 1, h, w]
    assert max(c[0] for c in calls) == min(2 * SLICE_BATCH_FACTOR, ours.n_tiles)
    assert len(calls) == (4 if tta else 1) * -(-ours.n_tiles // (2 * SLICE_BATCH_FACTOR))  # in-plane mirrors only


def test_2d_engine_roundtrip_and_coarse_to_fine(bundle_2d, make_ct, make_volume) -> None:
    volume = make_volume(make_ct((9, 50, 60)), (3.0, 1.2, 1.1))
    engine = Engine.from_bundle(bundle_2d, EngineConfig(backend="torch", device="cpu", postprocess=False))
    assert engine.info["patch_size"] == list(PATCH_2D) and engine.info["configuration"] == "2d"
    engine.warmup()
    pred = engine.predict(volume)
    assert pred.mask.shape == volume.array.shape and np.isclose(sum(pred.probabilities), 1)
    coarse = Engine.from_bundle(bundle_2d, EngineConfig(backend="torch", device="cpu", coarse_to_fine=True,
                                                        coarse_factor=2.0))
    pre = preprocess(volume.array, volume.spacing, coarse.plan.with_spacing_factor(2.0))
    assert tuple(pre.data.shape[1:]) == (9, 20, 22)  # every slice, in-plane at 2 x 1.5 mm
    fg = np.zeros((9, 20, 22), bool)
    fg[4, 10:12, 10:14] = True
    box = coarse._roi_box(fg, pre)
    margin = int(np.ceil(coarse.config.roi_margin))  # a slice patch is one slice deep: margin in slices
    assert box[0] == (4 - margin, 5 + margin)
    assert box[1][1] - box[1][0] >= np.ceil(PATCH_2D[0] * 1.5 / 1.2)  # at least one fine patch in-plane
    assert coarse.predict(volume).mask.shape == volume.array.shape


def test_tensorrt_profile_batches_slices_by_the_window_rule() -> None:
    """The TensorRT optimization profile of a 2D network holds the sliding window's slice batches (CPU-testable)."""
    build = TrtBuildConfig(max_batch=4, opt_batch=2)
    assert profile_batches(build, [32, 32]) == (2 * SLICE_BATCH_FACTOR, 4 * SLICE_BATCH_FACTOR)
    assert profile_batches(build, [16, 32, 32]) == (2, 4)  # 3D unchanged


def test_2d_fold_ensemble_runs_slices(tmp_path, make_ct, make_volume) -> None:
    bundle = make_random_bundle(tmp_path / "b", seed=4, folds=2, configuration="2d", plans=plans_2d(spacing=(3.0, 3.0)))
    engine = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cpu", tta=True))
    assert engine.info["folds"] == 2 and engine.backend.patch_size == (1, *PATCH_2D)
    volume = make_volume(make_ct((6, 40, 40)), (3.0, 1.5, 1.5))
    pred = engine.predict(volume)
    assert pred.mask.shape == volume.array.shape and np.isclose(sum(pred.probabilities), 1)
