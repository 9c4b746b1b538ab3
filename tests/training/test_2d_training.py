"""nnU-Net's ``2d`` configuration end to end on CPU: plan --tiny -> `pancreas train --config 2d` -> export-bundle ->
out-of-fold through the engine -> a real server answering an oblique, non-RAS upload on exactly its grid."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pancreas.bundle import Bundle
from pancreas.cli import main as pancreas_main
from pancreas.engine import Engine, EngineConfig
from pancreas.phantoms import SynthConfig, synthesize
from pancreas.testing import (
    OBLIQUE_DIRECTION,
    REPO_ROOT,
    ServerProcess,
    clean_env,
    decode_mask,
    post_ct,
    write_case,
)
from training.convert import convert_quiz
from training.export import export_bundle
from training.nnunet_env import configure
from training.planning import TinyOptions, plan_and_preprocess

DATASET_ID = 992
SPACING = (4.0, 2.0, 2.0)  # the 2d configuration plans (2.0, 2.0) in-plane and keeps each case's slice spacing
EPOCHS, ITERS = 6, 8

pytestmark = pytest.mark.slow  # one real nnU-Net plan + train + export (~1-2 min on 2 busy CPU cores)


@dataclass
class Run2D:
    root: Path
    dataset: str
    plans: dict[str, Any]
    fold_folder: Path
    bundle: Bundle
    seconds: float


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory: pytest.TempPathFactory) -> Run2D:
    t0 = time.time()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_2d")
    synthesize(root / "quiz", SynthConfig(cases_per_subtype=2, splits=("train", "validation"), seed=5,
                                          headers="canonical"))
    configure(root / "work")
    convert_quiz(root / "quiz", dataset_id=DATASET_ID, name="CI2D", workdir=root / "work")
    plan = plan_and_preprocess(DATASET_ID, configurations=("2d",), tiny=True,
                               tiny_options=TinyOptions(max_features=32, max_patch_pixels_2d=48 * 64, batch_size_2d=8),
                               overwrite_target_spacing=SPACING, num_processes=1, verify_integrity=False)
    plans = json.loads(plan.plans_file.read_text())
    rc = pancreas_main(["train", str(DATASET_ID), "--config", "2d", "--fold", "quiz", "--plans", plan.plans_identifier,
                        "--epochs", str(EPOCHS), "--iters-per-epoch", str(ITERS), "--val-iters", "1",
                        "--warmup-epochs", "1", "--optimizer", "adamw", "--lr", "3e-3", "--threads", "1",
                        "--seed", "0", "--workdir", str(root / "work")])
    assert rc == 0
    configure(root / "work")
    bundle = export_bundle(DATASET_ID, configuration="2d", folds=["quiz"], plans_identifier=plan.plans_identifier,
                           out=root / "bundle", command="pytest 2d export")
    folder = root / "work" / "nnUNet_results" / plan.dataset / f"MultiTaskTrainer__{plan.plans_identifier}__2d"
    return Run2D(root, plan.dataset, plans, folder / "fold_quiz", bundle, time.time() - t0)


def test_tiny_planner_gives_a_cpu_sized_2d_configuration(run_2d) -> None:
    cfg = run_2d.plans["configurations"]["2d"]
    assert len(cfg["patch_size"]) == 2 and np.prod(cfg["patch_size"]) <= 2 * 48 * 64  # cap, then nnU-Net's rounding
    assert cfg["spacing"] == [2.0, 2.0] and cfg["batch_size"] == 8
    assert cfg["architecture"]["arch_kwargs"]["conv_op"].endswith("Conv2d")


def test_2d_training_evaluates_and_exports(run_2d) -> None:
    print(f"2d run in {run_2d.seconds:.0f}s")
    metrics = json.loads((run_2d.fold_folder / "validation_metrics.json").read_text())
    assert metrics["summary"]["n_cases"] > 0 and metrics["summary"]["dice_whole"] > 0.2  # the 2D network learned
    meta = run_2d.bundle.metadata
    assert meta.network.configuration == "2d" and meta.artifacts[0].patch_size == run_2d.plans["configurations"]["2d"][
        "patch_size"]


def test_2d_held_out_case_through_the_engine(run_2d, tmp_path) -> None:
    """What out-of-fold does per case (training.oof): the fold's engine on a raw held-out case, scored."""
    from pancreas.evaluation import score_case
    from training.oof import case_files, fold_engines
    from training.subtypes import read_quiz_splits

    engine = fold_engines(run_2d.bundle, EngineConfig(backend="torch", device="cpu"))["quiz"]
    assert isinstance(engine, Engine) and engine.window.patch_size == (1, *run_2d.bundle.configuration["patch_size"])
    raw = run_2d.root / "work" / "nnUNet_raw" / run_2d.dataset
    image, label = case_files(raw, read_quiz_splits(raw)["validation"][0])
    pred = engine.predict_file(image, tmp_path / "pred.nii.gz")
    assert pred.timings_ms["inference"] > 0
    assert score_case(tmp_path / "pred.nii.gz", label)["whole_dsc"] > 0.2


def test_2d_bundle_served_keeps_an_oblique_grid(run_2d, tmp_path) -> None:
    """A real `pancreas serve` of the 2D bundle answers an oblique, non-RAS upload on exactly its grid."""
    path = write_case(tmp_path / "ct.nii.gz", (30, 56, 48), (1.7, 1.9, 3.5), direction=OBLIQUE_DIRECTION, seed=2)
    image = sitk.ReadImage(str(path))
    env = clean_env(num_threads=1, log_level="warning", tmp_dir=str(tmp_path))
    with ServerProcess.serve(run_2d.bundle.root, env=env, log=tmp_path / "server.log", cwd=REPO_ROOT) as srv:
        srv.wait_ready(120.0)
        with srv.client() as client:
            r = post_ct(client, path.read_bytes(), timeout=120.0)
    assert r.status_code == 200, r.text
    mask = decode_mask(r.json()["mask"], tmp_path)
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    assert sitk.GetArrayFromImage(mask).any()  # the trained 2D network finds the organ
