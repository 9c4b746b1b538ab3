"""Distillation fine-tuning through nnU-Net's loop (DistillationTrainer) on the real tiny training run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pancreas.bundle import Bundle, NetworkConfig
from pancreas.errors import DatasetError


@pytest.fixture(scope="module")
def teacher(tiny_run):
    from training.export import read_fold

    state, config, _ = read_fold(tiny_run.fold_folder)
    from pancreas.network import load_network

    return load_network(tiny_run.plans, config, state), config


@pytest.fixture(scope="module")
def val_patches(tiny_run):
    """Foreground-centred patches of the held-out (validation) cases, preprocessed like training."""
    from optimize.data import phantom_patches
    from pancreas.testing import make_random_bundle

    bundle = make_random_bundle(tiny_run.root / "patch_bundle", plans=tiny_run.plans)
    return phantom_patches(bundle, tiny_run.root / "quiz", split="validation", max_cases=6, per_case=2, seed=5,
                           fg_fraction=1.0)


def _kl(student, teacher, images) -> float:
    from training.losses import distillation_kl

    x = torch.from_numpy(images)
    with torch.no_grad():
        (seg, cls), (seg_t, cls_t) = student(x), teacher(x)
        return float(distillation_kl(seg, cls, seg_t, cls_t)[0])


def test_pruned_student_learns_from_teacher_in_nnunet_loop(tiny_run, teacher, val_patches) -> None:
    from optimize.prune import PruneConfig, prune_network
    from training.distillation import distill_fold
    from training.nnunet_env import configure
    from training.trainer import TrainOptions

    configure(tiny_run.root / "work")
    net, config = teacher
    before_teacher = copy.deepcopy(net.state_dict())
    pruned = prune_network(net, tiny_run.plans, config, tiny_run.plans["configurations"]["3d_fullres"]["patch_size"],
                           prune_config=PruneConfig(ratio=0.5))
    kl_before = _kl(pruned.net, net, val_patches.images)
    options = TrainOptions(head=config.head, epochs=4, iters_per_epoch=8, val_iters=1, warmup_epochs=0,
                           optimizer="adamw", initial_lr=2e-3, save_every=1000, evaluate=False)
    student, result = distill_fold(tiny_run.dataset, net, pruned.config, init_state=pruned.net.state_dict(),
                                   plans_identifier=tiny_run.plans_identifier, options=options, threads=2, seed=0,
                                   tag="test prune 0.5", bundle_plans=tiny_run.plans)
    kl_after = _kl(student, net, val_patches.images)
    assert kl_after < kl_before, (kl_before, kl_after)
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in pruned.net.parameters())
    assert student.encoder.output_channels == pruned.net.encoder.output_channels
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before_teacher.items()), "teacher was modified"
    assert result.output_folder.name == "fold_quiz"
    assert result.output_folder.parent.name.startswith("DistillationTrainer_test_prune_0_5__")
    saved = json.loads((result.output_folder / "network_config.json").read_text())
    assert saved["arch_kwargs_override"]["features_per_stage"] == pruned.config.arch_kwargs_override[
        "features_per_stage"]
    assert len(result.history) == 4 and (result.output_folder / "checkpoint_final.pth").is_file()


def test_optimize_recipe_fine_tunes_through_training_package(tiny_run, tmp_path) -> None:
    from optimize.distill import NnUNetFinetune
    from optimize.recipes import OptimizeOptions, optimize_bundle
    from pancreas.engine import Engine, EngineConfig
    from training.export import export_bundle
    from training.nnunet_env import configure

    configure(tiny_run.root / "work")
    source = export_bundle(tiny_run.dataset, configuration="3d_fullres", folds=["quiz"],
                           plans_identifier=tiny_run.plans_identifier, out=tmp_path / "teacher", command="pytest")
    nnunet = NnUNetFinetune(dataset=tiny_run.dataset, workdir=tiny_run.root / "work", plans=tiny_run.plans_identifier,
                            epochs=2, iters_per_epoch=4, threads=2)
    options = OptimizeOptions(data=tiny_run.root / "quiz", val_cases=2, val_per_case=1, parity_patches=2,
                              nnunet=nnunet)
    out = optimize_bundle(source, "distill:convs=1,onnx", tmp_path / "student", options=options)
    rec = out.metadata.optimization[0]
    assert rec["recipe"] == "distill:convs=1" and rec["finetune"]["engine"] == "nnunet"
    assert rec["finetune"]["steps"] == 8 and rec["finetune"]["epochs"] == 2
    assert rec["structure"]["params_after"] < rec["structure"]["params_before"]
    assert "DistillationTrainer_student_distill_convs_1" in rec["finetune"]["output_folder"]
    engine = Engine.from_bundle(Bundle.load(out.root), EngineConfig(backend="onnxruntime", device="cpu"))
    image = next((tiny_run.root / "quiz" / "validation").glob("subtype*/*_0000.nii.gz"))
    pred = engine.predict_file(image, tmp_path / "mask.nii.gz")
    from pancreas.nifti import read_image

    written, source = read_image(tmp_path / "mask.nii.gz"), read_image(image)
    assert written.GetSize() == source.GetSize() and pred.subtype in (0, 1, 2)


def test_plans_mismatch_is_refused_before_training(tiny_run) -> None:
    from training.distillation import check_same_plans

    other = copy.deepcopy(tiny_run.plans)
    other["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    with pytest.raises(DatasetError, match="spacing"):
        check_same_plans(tiny_run.plans, other, "3d_fullres")
    check_same_plans(tiny_run.plans, copy.deepcopy(tiny_run.plans), "3d_fullres")


def test_trainer_refuses_wrong_configuration_and_missing_teacher(tiny_run, teacher) -> None:
    from training.distillation import DistillationTrainer
    from training.nnunet_env import configure
    from training.runner import make_trainer
    from training.trainer import TrainOptions

    configure(tiny_run.root / "work")
    trainer = make_trainer(tiny_run.dataset, configuration="3d_fullres", fold="quiz",
                           plans_identifier=tiny_run.plans_identifier, options=TrainOptions(), device="cpu",
                           trainer_cls=DistillationTrainer)
    with pytest.raises(DatasetError, match="configuration"):
        trainer.set_distillation(teacher[0], NetworkConfig(configuration="2d"))
    with pytest.raises(RuntimeError, match="set_distillation"):
        trainer.initialize()


def test_kl_term_is_zero_for_identical_outputs_and_scales_with_t_squared() -> None:
    from training.losses import distillation_kl

    g = torch.Generator().manual_seed(0)
    seg, cls = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, generator=g)
    zero, _ = distillation_kl(seg, cls, seg.clone(), cls.clone())
    assert float(zero) == pytest.approx(0.0, abs=1e-6)
    seg_t, cls_t = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, generator=g)
    total, parts = distillation_kl(seg, cls, seg_t, cls_t, temperature=1.0, cls_weight=0.5)
    p_t, log_p, log_q = seg_t.softmax(1), seg_t.log_softmax(1), seg.log_softmax(1)
    expected_seg = float((p_t * (log_p - log_q)).sum(1).mean())
    assert float(parts["seg_kl"]) == pytest.approx(expected_seg, rel=1e-5)
    assert float(total) == pytest.approx(expected_seg + 0.5 * float(parts["cls_kl"]), rel=1e-5)
    assert np.isfinite(float(total)) and float(total) > 0
