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


@pytest.mark.slow
def test_deep_supervision_off_variant(tiny_run, short_options, tmp_path) -> None:
    """``deep_supervision_off`` is nnU-Net's no-deep-supervision trainer: one full-resolution output, a plain
    (unwrapped) segmentation loss, and it still trains, validates and records the option."""
    import torch
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from training.ablate import VARIANTS, run_ablation
    from training.nnunet_env import configure
    from training.runner import make_trainer

    configure(tiny_run.root / "work")
    options = VARIANTS["deep_supervision_off"](short_options)
    trainer = make_trainer(tiny_run.dataset, configuration="3d_fullres", fold=0,
                           plans_identifier=tiny_run.plans_identifier, options=options)
    trainer.initialize()
    assert not isinstance(trainer.loss.seg_loss, DeepSupervisionWrapper)
    seg, _ = trainer.network(torch.zeros(1, 1, *trainer.configuration_manager.patch_size))
    assert isinstance(seg, torch.Tensor) and seg.shape[2:] == tuple(trainer.configuration_manager.patch_size)
    rows, _ = run_ablation(tiny_run.dataset, base=short_options, variants=("deep_supervision_off",),
                           plans_identifier=tiny_run.plans_identifier, fold=0, threads=2, out=tmp_path / "abl")
    assert 0.0 <= rows[0].metrics["dice_whole"] <= 1.0
    folder = (tiny_run.root / "work" / "nnUNet_results" / tiny_run.dataset /
              f"MultiTaskTrainer_deep_supervision_off__{tiny_run.plans_identifier}__3d_fullres" / "fold_0")
    assert json.loads((folder / "train_options.json").read_text())["deep_supervision"] is False


@pytest.mark.slow
def test_finetune_from_pretrained_weights(tiny_run, short_options, tmp_path) -> None:
    """``--pretrained-weights`` starts a fold from another run's checkpoint (nnU-Net's loader: every tensor
    but the segmentation layers); a checkpoint of another network, or a missing one, is refused clearly."""
    from dataclasses import replace

    import torch

    from pancreas.errors import DatasetError, PancreasError
    from training.ablate import VARIANTS, run_ablation
    from training.nnunet_env import configure
    from training.runner import load_pretrained, make_trainer

    configure(tiny_run.root / "work")
    checkpoint = tiny_run.fold_folder / "checkpoint_final.pth"
    fitting = replace(short_options, head=HeadConfig(variant="mask", hidden=32), pretrained_weights=str(checkpoint))
    trainer = make_trainer(tiny_run.dataset, configuration="3d_fullres", fold=0,
                           plans_identifier=tiny_run.plans_identifier, options=fitting)
    load_pretrained(trainer, checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    state = trainer.network.state_dict()
    moved = [k for k in state if ".seg_layers." not in k]
    assert moved and all(torch.equal(state[k], saved[k]) for k in moved)
    other = make_trainer(tiny_run.dataset, configuration="3d_fullres", fold=0,
                         plans_identifier=tiny_run.plans_identifier, options=short_options)  # head hidden 16
    with pytest.raises(DatasetError, match="do not fit"):
        load_pretrained(other, checkpoint)
    with pytest.raises(DatasetError, match="do not exist"):
        load_pretrained(other, tmp_path / "missing.pth")
    with pytest.raises(PancreasError, match="needs --pretrained-weights"):
        VARIANTS["finetune"](short_options)
    rows, _ = run_ablation(tiny_run.dataset, base=fitting, variants=("finetune",),
                           plans_identifier=tiny_run.plans_identifier, fold=0, threads=2, out=tmp_path / "abl")
    assert 0.0 <= rows[0].metrics["dice_whole"] <= 1.0
    folder = (tiny_run.root / "work" / "nnUNet_results" / tiny_run.dataset /
              f"MultiTaskTrainer_finetune__{tiny_run.plans_identifier}__3d_fullres" / "fold_0")
    assert json.loads((folder / "train_options.json").read_text())["pretrained_weights"] == str(checkpoint)
