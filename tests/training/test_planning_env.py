"""nnU-Net folder configuration, tiny-planner hooks, lesion oversampling and the LR schedule."""

from __future__ import annotations

import argparse
import itertools
import os
from typing import ClassVar

import numpy as np
import pytest
import torch

from pancreas.errors import DatasetError


@pytest.fixture(autouse=True)
def _restore_nnunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() writes os.environ; register the current values so monkeypatch restores them."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, os.environ.get(var, ""))


def test_configure_sets_env_and_lazy_nnunet_paths(tmp_path) -> None:
    import nnunetv2.paths as npaths

    from training.nnunet_env import configure, current, dataset_workdir, resolve_dataset

    paths = configure(tmp_path / "w")
    assert os.environ["nnUNet_preprocessed"] == str(paths.preprocessed) and paths.results.is_dir()
    assert str(npaths.nnUNet_preprocessed) == str(paths.preprocessed)  # modules that imported it see it too
    assert current() == paths
    (paths.raw / "Dataset042_Foo").mkdir()
    assert resolve_dataset(42) == resolve_dataset("Dataset042_Foo") == "Dataset042_Foo"
    assert resolve_dataset(str(paths.raw / "Dataset042_Foo")) == "Dataset042_Foo"
    assert dataset_workdir(paths.raw / "Dataset042_Foo") == paths.root
    with pytest.raises(DatasetError, match="no dataset with id 7"):
        resolve_dataset(7)
    with pytest.raises(DatasetError, match="neither an id"):
        resolve_dataset("not-a-dataset")


def test_tiny_planner_helpers() -> None:
    from training.planning import _cap_shape, _truncate_stages

    capped = _cap_shape([64, 120, 180], 40 * 56 * 56)
    assert np.prod(capped) <= 40 * 56 * 56 and capped[2] > capped[1] > capped[0]
    assert list(_cap_shape([10, 10, 10], 10 ** 6)) == [10, 10, 10]
    arch = {"n_stages": 6, "features_per_stage": [8, 16, 32, 64, 64, 64], "kernel_sizes": [[3, 3, 3]] * 6,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [1] * 5}
    _truncate_stages(arch, 4)
    assert arch["n_stages"] == 4 and len(arch["strides"]) == 4 and len(arch["n_conv_per_stage_decoder"]) == 3


def test_plan_rejects_unknown_configuration(tmp_path) -> None:
    from training.nnunet_env import configure
    from training.planning import plan_and_preprocess

    configure(tmp_path / "w")
    with pytest.raises(DatasetError, match="unknown configuration"):
        plan_and_preprocess(1, configurations=("4d",))
    with pytest.raises(DatasetError, match="unknown planner"):
        plan_and_preprocess(1, planner="huge")


def test_warmup_poly_schedule() -> None:
    from training.trainer import WarmupPolyLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupPolyLR(opt, 1.0, max_steps=10, warmup=2)
    lrs = [sched.lr_at(e) for e in range(10)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] > 0
    sched.step(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[5])


class _LabelManager:
    """The two attributes nnUNetDataLoader reads from nnU-Net's LabelManager."""

    all_labels: ClassVar[list[int]] = [0, 1, 2]
    has_ignore_label = False


class _Data:
    identifiers: ClassVar[list[str]] = ["a"]


@pytest.mark.parametrize("lesion_p, expect_lesion_share", [(1.0, 1.0), (0.0, 0.5)])
def test_lesion_oversampling_centres_on_lesion(lesion_p: float, expect_lesion_share: float) -> None:
    from training.dataloading import LesionOversamplingDataLoader

    dl = LesionOversamplingDataLoader(_Data(), 2, (8, 8, 8), (8, 8, 8), _LabelManager(),
                                      oversample_foreground_percent=1.0, lesion_p=lesion_p)
    locs = {1: np.array([[0, 2, 2, 2]]), 2: np.array([[0, 40, 40, 40]])}
    np.random.seed(0)
    lesion_hits = []
    for _ in range(200):
        lb, _ = dl.get_bbox(np.array([48, 48, 48]), True, locs)
        lesion_hits.append(lb[0] >= 30)
    assert np.mean(lesion_hits) == pytest.approx(expect_lesion_share, abs=0.12)


def test_subtype_table_errors(tmp_path) -> None:
    from training.dataloading import find_subtypes, read_subtype_table

    with pytest.raises(DatasetError, match="subtypes.csv"):
        find_subtypes("Dataset001_X", tmp_path, tmp_path)
    (tmp_path / "subtypes.csv").write_text("case_id,subtype,split\nquiz_0_001,0,train\nquiz_2_002,2,validation\n")
    assert read_subtype_table(tmp_path) == {"quiz_0_001": 0, "quiz_2_002": 2}


def test_external_trainer_lookup_finds_our_trainer() -> None:
    """``nnUNet_extTrainer=<repo>/training nnUNetv2_train ... -tr nnUNetTrainerMultiTask`` finds the class
    (nnU-Net's own lookup first scans nnunetv2.training, which needs torchvision; this is the external part)."""
    from pathlib import Path

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    import training

    folder = str(Path(training.__file__).parent)
    cls = recursive_find_python_class(folder, "nnUNetTrainerMultiTask", None, base_folder=folder,
                                      cleanup_imports_from_base_folder=True)
    assert cls is not None and issubclass(cls, nnUNetTrainer)
    assert cls.default_options.head.variant == "mask"


def test_source_weights_set_nnunet_draw_probabilities() -> None:
    """``TrainOptions.source_weights`` becomes nnU-Net's ``sampling_probabilities``; its loader draws by them."""
    from training.dataloading import LesionOversamplingDataLoader, source_sampling_probabilities

    class Data:
        identifiers: ClassVar[list[str]] = ["r1", "r2", "p1", "p2"]

    sources = {"r1": "real", "r2": "real", "p1": "phantom", "p2": "phantom"}
    assert source_sampling_probabilities(Data.identifiers, sources, None) is None
    p = source_sampling_probabilities(Data.identifiers, sources, {"phantom": 0.25})
    np.testing.assert_allclose(p, [0.4, 0.4, 0.1, 0.1])
    dl = LesionOversamplingDataLoader(Data(), 2, (8, 8, 8), (8, 8, 8), _LabelManager(), sampling_probabilities=p)
    np.random.seed(0)
    drawn = [k for _ in range(2000) for k in dl.get_indices()]
    phantom_share = np.mean([k.startswith("p") for k in drawn])
    assert phantom_share == pytest.approx(0.2, abs=0.03)
    with pytest.raises(DatasetError, match="weight 0"):
        source_sampling_probabilities(Data.identifiers, sources, {"phantom": 0.0, "real": 0.0})


def test_source_weights_validated() -> None:
    from training.trainer import TrainOptions

    with pytest.raises(DatasetError, match="source_weights"):
        TrainOptions(source_weights={"scanner": 1.0})
    with pytest.raises(DatasetError, match="source_weights"):
        TrainOptions(source_weights={"phantom": -1.0})


def test_cli_fold_names() -> None:
    from training.cli.train import _source_weights, nnunet_fold

    assert nnunet_fold("3") == 3 and nnunet_fold("full") == "all" and nnunet_fold("quiz") == "quiz"
    assert _source_weights("phantom=0.25,real=1") == {"phantom": 0.25, "real": 1.0}
    with pytest.raises(argparse.ArgumentTypeError, match="SOURCE=WEIGHT"):
        _source_weights("phantom")
