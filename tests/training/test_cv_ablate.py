"""CV summary and ablation table from real (very short) trainings on the tiny dataset."""

from __future__ import annotations

import json

import pytest

from pancreas.bundle import HeadConfig


@pytest.fixture()
def short_options():
    from training.trainer import TrainOptions

    return TrainOptions(head=HeadConfig(variant="mask", hidden=16), epochs=1, iters_per_epoch=2, val_iters=1,
                        warmup_epochs=0, optimizer="adamw", initial_lr=3e-3, save_every=1000)


@pytest.mark.slow
def test_cv_summary_files(tiny_run, short_options, tmp_path) -> None:
    from training.cv import run_cv
    from training.nnunet_env import configure

    configure(tiny_run.root / "work")
    summary = run_cv(tiny_run.dataset, plans_identifier=tiny_run.plans_identifier, options=short_options,
                     folds=(0, 1), threads=2, out=tmp_path / "cv")
    data = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert [f["fold"] for f in data["folds"]] == [0, 1]
    for metric in ("dice_whole", "dice_lesion", "macro_f1"):
        vals = [f[metric] for f in data["folds"]]
        assert data["summary"][metric]["mean"] == pytest.approx(sum(vals) / 2)
    assert "mean ± sd" in (tmp_path / "cv" / "cv_summary.md").read_text()
    assert (tmp_path / "cv" / "cv_curves.png").stat().st_size > 1000
    assert set(data["histories"]) == {"fold_0", "fold_1"} and summary.files["png"].endswith(".png")


@pytest.mark.slow
def test_ablation_table(tiny_run, short_options, tmp_path) -> None:
    from training.ablate import run_ablation
    from training.nnunet_env import configure

    configure(tiny_run.root / "work")
    rows, _files = run_ablation(tiny_run.dataset, base=short_options, variants=("baseline", "head_gap"),
                               plans_identifier=tiny_run.plans_identifier, fold=0, threads=2, out=tmp_path / "abl")
    assert [r.variant for r in rows] == ["baseline", "head_gap"] and [r.head for r in rows] == ["mask", "gap"]
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| head_gap | gap |" in table
    assert (tiny_run.root / "work" / "nnUNet_results" / tiny_run.dataset /
            f"MultiTaskTrainer_head_gap__{tiny_run.plans_identifier}__3d_fullres" / "fold_0").is_dir()
