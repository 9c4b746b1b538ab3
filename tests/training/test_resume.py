"""``pancreas train --resume``: a real tiny training interrupted after a checkpoint continues where it stopped."""

from __future__ import annotations

import json

import pytest

from pancreas.errors import DatasetError
from training.runner import train_fold
from training.trainer import MultiTaskTrainer, TrainOptions

EPOCHS, SAVE_EVERY = 3, 2  # the interrupted run leaves checkpoint_latest after epoch 2 of 3
PROBE = "MultiTaskTrainerResumeProbe"


class _Interrupted(Exception):
    pass


class _StopsAfterCheckpoint(MultiTaskTrainer):
    """Dies right after the first periodic checkpoint, like a killed job."""

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.current_epoch == SAVE_EVERY:
            raise _Interrupted


def _options(**kw) -> TrainOptions:
    from pancreas.bundle import HeadConfig

    base = {"head": HeadConfig(variant="mask", hidden=32), "epochs": EPOCHS, "iters_per_epoch": 2, "val_iters": 1,
            "warmup_epochs": 1, "optimizer": "adamw", "initial_lr": 3e-3, "save_every": SAVE_EVERY,
            "evaluate": False}
    return TrainOptions(**{**base, **kw})


def test_resume_continues_an_interrupted_fold(tiny_run) -> None:
    from tests.training.conftest import CI_DATASET_ID

    common = {"configuration": "3d_fullres", "fold": "quiz", "plans_identifier": tiny_run.plans_identifier,
              "threads": 1, "seed": 0, "trainer_name": PROBE}
    with pytest.raises(_Interrupted):
        train_fold(CI_DATASET_ID, options=_options(), trainer_cls=_StopsAfterCheckpoint, **common)
    folder = tiny_run.fold_folder.parent.parent / f"{PROBE}__{tiny_run.plans_identifier}__3d_fullres" / "fold_quiz"
    assert (folder / "checkpoint_latest.pth").is_file() and not (folder / "checkpoint_final.pth").exists()
    before = json.loads((folder / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in before] == [0, 1]

    with pytest.raises(DatasetError, match="other options.*initial_lr"):
        train_fold(CI_DATASET_ID, options=_options(initial_lr=1e-2), resume=True, **common)

    result = train_fold(CI_DATASET_ID, options=_options(), resume=True, **common)
    assert [e["epoch"] for e in result.history] == [0, 1, 2]
    saved = json.loads((folder / "history.json").read_text())["epochs"]
    assert saved[:2] == before  # the records (losses, timings) of the first run: only epoch 2 was trained again
    assert saved[2]["lr"] == pytest.approx(result.history[2]["lr"]) and len(saved) == 3
    assert result.checkpoint.is_file() and not (folder / "checkpoint_latest.pth").exists()
