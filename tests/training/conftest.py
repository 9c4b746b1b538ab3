"""Session fixture: a REAL tiny nnU-Net run on CPU (synth -> convert -> plan --tiny -> train -> evaluate).

Held-out phantoms (the quiz validation split) are scored with the untrained network and the trained one
in the same session, so tests can assert that training, not chance, produced the numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

CI_DATASET_ID = 990
CI_SPACING = (4.0, 2.0, 2.0)  # coarse grid: ~30x45x65 voxels per crop, fast on 2 CPU cores
CI_EPOCHS, CI_ITERS = 10, 10


@dataclass
class TinyRun:
    root: Path
    dataset: str
    plans_identifier: str
    plans: dict[str, Any]
    fold_folder: Path
    val_keys: list[str]
    untrained: dict[str, Any]
    trained: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    from pancreas.bundle import HeadConfig, NetworkConfig
    from pancreas.network import build_network
    from pancreas.phantoms import SynthConfig, synthesize
    from training.convert import convert_quiz
    from training.dataloading import find_subtypes
    from training.holdout import evaluate_preprocessed
    from training.nnunet_env import configure
    from training.planning import TinyOptions, plan_and_preprocess
    from training.runner import train_fold
    from training.subtypes import read_quiz_splits
    from training.trainer import TrainOptions

    t0 = time.time()
    root = tmp_path_factory.mktemp("tiny_nnunet")
    synthesize(root / "quiz", SynthConfig(cases_per_subtype=4, splits=("train", "validation"), seed=11,
                                          headers="canonical"))
    paths = configure(root / "work")
    raw = convert_quiz(root / "quiz", dataset_id=CI_DATASET_ID, name="CIPhantoms", workdir=root / "work")
    plan = plan_and_preprocess(CI_DATASET_ID, configurations=("3d_fullres",), tiny=True,
                               tiny_options=TinyOptions(max_features=32, max_patch_voxels=32 * 48 * 48),
                               overwrite_target_spacing=CI_SPACING, num_processes=2, verify_integrity=False)
    plans = json.loads(plan.plans_file.read_text())
    head = HeadConfig(variant="mask", hidden=32)
    val_keys = read_quiz_splits(raw)["validation"]
    subtypes = find_subtypes(plan.dataset, paths.raw, paths.preprocessed)
    folder = str(paths.preprocessed / plan.dataset / plans["configurations"]["3d_fullres"]["data_identifier"])
    torch.manual_seed(0)
    untrained_net = build_network(plans, NetworkConfig(head=head))
    untrained = evaluate_preprocessed(untrained_net, plans, "3d_fullres", folder, val_keys, subtypes,
                                      device=torch.device("cpu"))
    options = TrainOptions(head=head, epochs=CI_EPOCHS, iters_per_epoch=CI_ITERS, val_iters=1, warmup_epochs=1,
                           optimizer="adamw", initial_lr=3e-3, save_every=1000)
    result = train_fold(CI_DATASET_ID, configuration="3d_fullres", fold="quiz",
                        plans_identifier=plan.plans_identifier, options=options, threads=2, seed=0)
    return TinyRun(root, plan.dataset, plan.plans_identifier, plans, result.output_folder, val_keys,
                   untrained["summary"], result.metrics["summary"], result.history, time.time() - t0)
