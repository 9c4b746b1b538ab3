"""The cascade (3d_lowres -> 3d_cascade_fullres): bundle validation, nnU-Net-equal previous-stage channels, engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pancreas.bundle import METADATA, Bundle
from pancreas.cascade import FOREGROUND_LABELS, previous_stage_channels, segmentation_spec
from pancreas.engine import Engine
from pancreas.engine_config import ENGINE_STAGES, EngineConfig
from pancreas.errors import BundleError
from pancreas.nifti import read_volume
from pancreas.prediction import Timer
from pancreas.preprocess import PreprocessPlan, preprocess
from pancreas.testing import (
    OBLIQUE_DIRECTION,
    cascade_plans,
    ct_array,
    make_random_bundle,
    make_random_cascade_bundle,
    write_case,
)

CONFIG = EngineConfig(backend="torch", device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    torch.set_num_threads(1)
    return make_random_cascade_bundle(tmp_path_factory.mktemp("cascade") / "bundle", seed=0)


@pytest.fixture(scope="module")
def oblique(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(tmp_path_factory.mktemp("ct") / "ct.nii.gz", (30, 56, 60), (1.4, 1.6, 2.5),
                      direction=OBLIQUE_DIRECTION, seed=1)


def _copy(bundle: Bundle, dst: Path) -> Path:
    shutil.copytree(bundle.root, dst)
    return dst


def _edit_metadata(root: Path, **changes: object) -> None:
    meta = json.loads((root / METADATA).read_text())
    meta.update(changes)
    (root / METADATA).write_text(json.dumps(meta))


# ---- bundle ----------------------------------------------------------------------------------------------
def test_cascade_bundle_nests_its_previous_stage(cascade):
    assert cascade.metadata.previous_stage == "stages/3d_lowres"
    assert cascade.metadata.network.input_channels == 1 + len(FOREGROUND_LABELS) == 3
    assert cascade.previous_stage is not None
    assert cascade.previous_stage.metadata.network.configuration == "3d_lowres"
    assert cascade.previous_stage.metadata.network.input_channels == 1
    assert cascade.configuration["patch_size"] == cascade.plans["configurations"]["3d_fullres"]["patch_size"]


def test_missing_previous_stage_is_refused(cascade, tmp_path):
    root = _copy(cascade, tmp_path / "b")
    shutil.rmtree(root / "stages")
    with pytest.raises(BundleError, match="previous stage 'stages/3d_lowres' is missing.*export-bundle") as exc:
        Bundle.load(root)
    assert exc.value.code == "bundle_incomplete"


def test_cascade_without_previous_stage_field_is_refused(cascade, tmp_path):
    root = _copy(cascade, tmp_path / "b")
    _edit_metadata(root, previous_stage=None)
    with pytest.raises(BundleError, match="cascade stage.*names no previous_stage bundle"):
        Bundle.load(root)


def test_previous_stage_of_the_wrong_configuration_is_refused(cascade, tmp_path):
    root = _copy(cascade, tmp_path / "b")
    shutil.rmtree(root / "stages" / "3d_lowres")
    make_random_bundle(root / "stages" / "3d_lowres", plans=cascade.plans, configuration="3d_fullres")
    with pytest.raises(BundleError, match="is configuration '3d_fullres'.*previous_stage of '3d_cascade_fullres' is "
                                          "'3d_lowres'"):
        Bundle.load(root)


def test_escaping_or_broken_previous_stage_is_refused(cascade, tmp_path):
    root = _copy(cascade, tmp_path / "b")
    _edit_metadata(root, previous_stage="../elsewhere")
    with pytest.raises(BundleError, match="escapes the bundle folder"):
        Bundle.load(root)
    _edit_metadata(root, previous_stage="stages/3d_lowres")
    (root / "stages" / "3d_lowres" / "models" / "fold_0.pt").write_bytes(b"")
    with pytest.raises(BundleError, match="previous stage 'stages/3d_lowres' is not a valid bundle.*missing or empty"):
        Bundle.load(root)


def test_previous_stage_on_a_plain_configuration_is_refused(tmp_path):
    plain = make_random_bundle(tmp_path / "plain", plans=cascade_plans())
    _edit_metadata(plain.root, previous_stage="stages/3d_lowres")
    with pytest.raises(BundleError, match="configuration '3d_fullres'.*has no previous stage"):
        Bundle.load(plain.root)


# ---- preprocessing: the previous stage's channels equal nnU-Net's -----------------------------------------
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (2.0, 1.5, 1.5)],
                         ids=["iso-2x-ties", "anisotropic-separate-z", "same-grid"])
def test_previous_stage_channels_match_nnunet_preprocessor(spacing):
    """nnU-Net's DefaultPreprocessor with the low-res labels as ``seg``, then ``convert_labelmap_to_one_hot``."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = cascade_plans()
    ct, _ = ct_array((26, 44, 40), seed=3)
    rng = np.random.default_rng(0)  # a jagged "low-res prediction": blocks of labels 0/1/2 with ragged edges
    labels = np.kron(rng.integers(0, 3, (13, 11, 10)), np.ones((2, 4, 4))).astype(np.uint8)
    manager = PlansManager(plans)
    dataset = {"labels": {"background": 0, "pancreas": 1, "lesion": 2}, "channel_names": {"0": "CT"}}
    _, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        ct[None].astype(np.float32), labels[None].astype(np.int16), {"spacing": list(spacing)}, manager,
        manager.get_configuration("3d_cascade_fullres"), dataset)
    expected = convert_labelmap_to_one_hot(seg[0], FOREGROUND_LABELS, output_dtype=np.float32)

    plan = PreprocessPlan.from_plans(plans, "3d_cascade_fullres")
    pre = preprocess(ct, spacing, plan)
    ours = previous_stage_channels(labels, pre, plan, segmentation_spec(plans, "3d_cascade_fullres")).numpy()
    assert ours.shape == expected.shape == (2, *pre.data.shape[1:])
    assert np.array_equal(ours, expected), f"{(ours != expected).mean():.5f} of the voxels differ"


# ---- engine ----------------------------------------------------------------------------------------------
def test_cascade_engine_runs_both_stages_on_an_oblique_ct(cascade, oblique):
    engine = Engine.from_bundle(cascade, CONFIG)
    assert engine.previous is not None and engine.previous.bundle.root == cascade.previous_stage.root
    engine.warmup()  # [B, 3, *patch] for the cascade, [B, 1, *patch] for its previous stage
    volume = read_volume(oblique)
    pred = engine.predict(volume)
    assert pred.mask.shape == volume.array.shape and pred.mask.dtype == np.uint8
    assert set(pred.mask.ravel()) <= {0, 1, 2} and abs(sum(pred.probabilities) - 1) < 1e-6
    assert set(pred.timings_ms) - {"total"} <= set(ENGINE_STAGES)
    assert set(pred.parts_ms) == {"3d_lowres", "3d_cascade_fullres"}
    for part in pred.parts_ms.values():
        assert set(part) - {"total"} <= set(ENGINE_STAGES) and part["inference"] > 0
        assert part["total"] == pytest.approx(sum(v for k, v in part.items() if k != "total"))
    assert sum(p["total"] for p in pred.parts_ms.values()) == pytest.approx(pred.timings_ms["total"], rel=1e-6)
    assert "postprocess" in pred.parts_ms["3d_cascade_fullres"] and "postprocess" not in pred.parts_ms["3d_lowres"]


def test_cascade_feeds_the_previous_stage_into_the_full_res_stage(cascade, oblique):
    """Every full-res patch carries the low-res stage's one-hot labels as channels 1..2."""
    volume = read_volume(oblique)
    engine = Engine.from_bundle(cascade, CONFIG)
    seen = []
    forward = engine.backend.forward

    def spy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(x[:, 1:].clone())
        return forward(x)

    engine.backend.forward = spy
    labels, _ = engine.previous.labels(volume, Timer())
    engine.predict(volume)
    channels = torch.cat(seen)
    assert channels.shape[1] == 2 and set(torch.unique(channels).tolist()) <= {0.0, 1.0}
    assert bool(channels.sum() > 0) == bool((labels > 0).any())
    assert torch.all(channels.sum(1) <= 1)  # one-hot of one label map


def test_coarse_to_fine_takes_the_roi_from_the_previous_stage(cascade, oblique):
    volume = read_volume(oblique)
    engine = Engine.from_bundle(cascade, EngineConfig(backend="torch", device="cpu", num_threads=1,
                                                      coarse_to_fine=True))
    pred = engine.predict(volume)
    assert pred.mask.shape == volume.array.shape
    assert "coarse" in pred.parts_ms["3d_cascade_fullres"]  # the ROI from the low-res labels, no coarse network pass
