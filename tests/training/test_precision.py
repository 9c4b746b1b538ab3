"""bf16 CPU training: the convolutions run in bfloat16, the loss in float32, the weights stay float32."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from pancreas.errors import DatasetError
from training.precision import TRAINING_PRECISIONS, as_float, training_autocast


def test_cpu_autocast_runs_convolutions_in_bf16_only_when_asked() -> None:
    conv = torch.nn.Conv3d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5, 5)
    with training_autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with training_autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32


def test_as_float_casts_deep_supervision_outputs_but_leaves_cuda_alone() -> None:
    outs = [torch.zeros(2, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)]
    cast = as_float(outs, "cpu")
    assert isinstance(cast, list) and [o.dtype for o in cast] == [torch.float32, torch.float32]
    assert as_float(outs[0], "cpu").dtype == torch.float32
    assert as_float(outs, "cuda") is outs  # nnU-Net's fp16 path computes its loss under autocast


def test_unknown_precision_is_refused() -> None:
    from training.trainer import TrainOptions

    assert TrainOptions().precision == "fp32"
    with pytest.raises(DatasetError, match="precision 'fp16'"):
        TrainOptions(precision="fp16")


def test_cli_precision_option() -> None:
    from training.cli.train import add_arguments, options_from_args

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    assert options_from_args(parser.parse_args(["503", "--precision", "bf16"])).precision == "bf16"
    assert options_from_args(parser.parse_args(["503"])).precision == "fp32"
    assert set(TRAINING_PRECISIONS) == {"fp32", "bf16"}
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["503", "--precision", "fp16"])


@pytest.mark.slow
def test_bf16_train_step_on_a_real_nnunet_batch(tiny_run) -> None:
    """One nnU-Net training step in bf16 on a real augmented batch: the first convolution's output is bfloat16,
    the loss float32 and finite, every weight float32 and changed by the step."""
    from training.nnunet_env import configure
    from training.runner import make_trainer
    from training.trainer import TrainOptions

    configure(tiny_run.root / "work")
    options = TrainOptions(epochs=1, iters_per_epoch=1, val_iters=1, warmup_epochs=0, optimizer="adamw",
                           initial_lr=3e-3, precision="bf16", num_workers=0)
    trainer = make_trainer(tiny_run.dataset, configuration="3d_fullres", fold=0,
                           plans_identifier=tiny_run.plans_identifier, options=options)
    trainer.initialize()
    trainer.dataloader_train, _ = trainer.get_dataloaders()
    seen: list[torch.dtype] = []
    first_conv = next(m for m in trainer.network.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    before = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    out = trainer.train_step(next(trainer.dataloader_train))
    assert seen == [torch.bfloat16]
    assert out["loss"].dtype.name == "float32" and math.isfinite(float(out["loss"]))
    after = trainer.network.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())
    assert all(v.dtype == torch.float32 for k, v in after.items() if v.is_floating_point())
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if v.is_floating_point())


@pytest.mark.slow
def test_train_speed_benchmark_writes_its_page(tiny_run, tmp_path) -> None:
    """The benchmark trains each precision for real, records every epoch, and removes its trainer folders."""
    import json

    from benchmarks.train_speed import main

    out = tmp_path / "results"
    assert main(["--dataset", tiny_run.dataset, "--workdir", str(tiny_run.root / "work"), "--plans",
                 tiny_run.plans_identifier, "--epochs", "2", "--iters-per-epoch", "3", "--rounds", "1", "--threads", "2",
                 "--data-note", "CI phantoms", "--out", str(out), "--name", "speed"]) == 0
    result = json.loads((out / "speed.json").read_text())
    for precision in ("fp32", "bf16"):
        (run,) = result["epoch_seconds"][precision]
        assert len(run) == 2 and all(t > 0 for t in run)
        assert result["median_s_per_epoch"][precision] == run[1]
    page = (out / "speed.md").read_text()
    assert "CI phantoms" in page and "| bf16 |" in page and result["command"] in page
    results = tiny_run.root / "work" / "nnUNet_results" / tiny_run.dataset
    assert not any(p.name.startswith("TrainSpeed_") for p in results.iterdir())
