"""Pruning, distillation and torch.export on the real multi-task network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimize.compile import export_program, load_program
from optimize.distill import (
    DistillConfig,
    StudentSpec,
    build_student,
    distillation_loss,
    finetune,
    student_config,
)
from optimize.prune import PruneConfig, PruneError, prune_network, stage_widths
from optimize.runners import torch_runner
from optimize.validate import parity_gate
from pancreas.network import build_network


@pytest.mark.parametrize("head", ["mask", "gap"])
def test_pruning_reduces_params_and_keeps_skips_consistent(bundle, net, patch_size, head):
    config = bundle.metadata.network.model_copy(deep=True)
    config.head.variant = head
    source = build_network(bundle.plans, config) if head != "mask" else net
    result = prune_network(source, bundle.plans, config, patch_size, prune_config=PruneConfig(ratio=0.5))
    assert result.params_after < result.params_before and result.macs_after < result.macs_before
    widths = result.config.arch_kwargs_override["features_per_stage"]
    assert widths == stage_widths(result.net) and all(w < f for w, f in zip(widths, (4, 8, 16)))
    # the pruned weights load into a network built from plans + override (what the torch backend does)
    rebuilt = build_network(bundle.plans, result.config)
    rebuilt.load_state_dict(result.net.state_dict(), strict=True)
    seg, cls = rebuilt.eval()(torch.zeros(2, 1, *patch_size))
    assert seg.shape == (2, 3, *patch_size) and cls.shape == (2, 3)


def test_pruning_rejects_bad_ratio(bundle, net, patch_size):
    with pytest.raises(PruneError, match="ratio"):
        prune_network(net, bundle.plans, bundle.metadata.network, patch_size, prune_config=PruneConfig(ratio=1.5))


def test_student_spec_parsing_and_config(bundle):
    spec = StudentSpec.parse("width=0.5:convs=1")
    assert spec == StudentSpec(width=0.5, convs=1)
    cfg = student_config(bundle.plans, bundle.metadata.network, spec)
    assert cfg.arch_kwargs_override["features_per_stage"] == [2, 4, 8]
    assert cfg.arch_kwargs_override["n_conv_per_stage"] == [1, 1, 1]
    with pytest.raises(ValueError, match="not understood"):
        StudentSpec.parse("depth=2")


def test_distillation_reduces_the_distillation_loss(bundle, net, patches, patch_size):
    train = patches[0]
    student, _ = build_student(net, bundle.plans, bundle.metadata.network, StudentSpec(width=0.5, init="random"),
                               patch_size)
    config = DistillConfig(steps=5, batch=len(train), lr=3e-3)
    x, y, s = (torch.from_numpy(a) for a in (train.images, train.labels, train.subtypes))

    def loss() -> float:
        with torch.no_grad():
            return distillation_loss(student.eval()(x), net.eval()(x), y, s, config)[0].item()

    before = loss()
    history = finetune(student, net, train, config=config)
    assert len(history) == 5 and np.isfinite(history).all()
    assert loss() < before


def test_exported_program_is_servable_through_the_torch_backend(net, patches, patch_size, tmp_path):
    from pancreas.backends.torch_backend import TorchBackend

    path = export_program(net, patch_size, tmp_path / "model.pt2")
    backend = TorchBackend(load_program(path), patch_size=patch_size)
    x = patches[1].images[:3]  # batch 3: the batch axis is dynamic
    report = parity_gate(torch_runner(net), backend, x, what=str(path))
    assert report.agreement == pytest.approx(1.0)


def _device_asserts(module: torch.nn.Module) -> list[str]:
    graph = module._program.graph
    return [str(n.kwargs["device"]) for n in graph.nodes
            if n.target is torch.ops.aten._assert_tensor_metadata.default and "device" in n.kwargs]


def test_loaded_program_is_moved_with_its_device_asserts(net, patches, patch_size, tmp_path):
    """A program exported on CPU records ``_assert_tensor_metadata(device=cpu)``; ``.module().to(dev)``
    keeps them (on CUDA: "Tensor device mismatch"), ``load_program`` rewrites them for the target device."""
    path = export_program(net, patch_size, tmp_path / "model.pt2")
    on_cpu = load_program(path, device="cpu")
    assert set(_device_asserts(on_cpu)) == {"cpu"}
    moved = load_program(path, device="meta")  # a second device that exists without a GPU
    assert _device_asserts(moved) and set(_device_asserts(moved)) == {"meta"}
    seg, _ = moved(torch.zeros(2, 1, *patch_size, device="meta"))
    assert seg.device.type == "meta" and seg.shape == (2, 3, *patch_size)
    x = patches[1].images[:2]
    report = parity_gate(torch_runner(net), torch_runner(on_cpu), x, what=str(path))
    assert report.agreement == pytest.approx(1.0)


def test_aoti_package_device_is_checked_and_recorded(tmp_path):
    from optimize.compile import CompileConfig, compile_device
    from pancreas.backends import BackendUnavailableError
    from pancreas.backends.torch_backend import exported_device
    from pancreas.bundle import Artifact

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert compile_device(CompileConfig()) == expected and compile_device(CompileConfig(device="cpu")) == "cpu"
    cuda_pkg = Artifact(kind="torch_export", path="models/model_aoti.pt2", precision="fp32",
                        info={"format": "aoti_package", "device": "cuda"})
    with pytest.raises(BackendUnavailableError, match="compiled for 'cuda'"):
        exported_device(cuda_pkg, "cpu")
    assert exported_device(cuda_pkg, "cuda:1") == "cuda:1"
    program = Artifact(kind="torch_export", path="models/model.pt2", precision="fp32",
                       info={"format": "exported_program"})
    assert exported_device(program, "cuda") == "cuda"  # moved at load time
