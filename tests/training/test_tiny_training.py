"""A real tiny nnU-Net training on CPU learns: held-out DSC rises well above the untrained network's."""

from __future__ import annotations

import json
import math

MIN_WHOLE_DSC = 0.5  # absolute bar for 100 CPU steps on a coarse grid (measured ~0.75; untrained ~0.1)


def test_training_learns_whole_pancreas(tiny_run) -> None:
    before, after = tiny_run.untrained, tiny_run.trained
    print(f"untrained {before} -> trained {after} in {tiny_run.seconds:.0f}s")
    assert after["n_cases"] == before["n_cases"] == len(tiny_run.val_keys) > 0
    assert after["dice_whole"] >= MIN_WHOLE_DSC
    assert after["dice_whole"] >= before["dice_whole"] + 0.3


def test_history_and_logs_written(tiny_run) -> None:
    hist = json.loads((tiny_run.fold_folder / "history.json").read_text())
    assert len(hist["epochs"]) == len(tiny_run.history) > 0
    first, last = hist["epochs"][0], hist["epochs"][-1]
    for key in ("train_loss", "seg_loss", "cls_loss", "val_loss", "dice_pancreas", "dice_lesion", "patch_f1", "lr"):
        assert key in last and not math.isnan(float(last[key])), key
    assert last["seg_loss"] < first["seg_loss"]
    assert hist["options"]["head"]["variant"] == "mask"
    metrics = json.loads((tiny_run.fold_folder / "validation_metrics.json").read_text())
    assert {c["case"] for c in metrics["cases"]} == set(tiny_run.val_keys)
    assert (tiny_run.fold_folder / "checkpoint_final.pth").is_file()
