"""Structured channel pruning with torch-pruning (1.6) that respects the U-Net's skip connections.

torch-pruning traces the network into a dependency graph, so pruning an encoder stage's output channels
also prunes the decoder convolution that reads the skip (through the ``cat``), the next stage's input
and the classification head's input projections. The segmentation output convs (``decoder.seg_layers``)
and the head's own layers are never pruned as roots, so the outputs keep 3 classes.

Every group is pruned by the same ratio, so each stage keeps one width and the pruned network is
described exactly by ``NetworkConfig.arch_kwargs_override = {"features_per_stage": [...]}``: the pruned
weights load into ``build_network(plans, config)`` like any other bundle (checked here, shape by shape).
Needs out-of-place activations: :mod:`pancreas.network` builds every network with ``inplace=False``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pancreas.bundle import NetworkConfig
from pancreas.errors import PancreasError
from pancreas.network import build_network

logger = logging.getLogger(__name__)


def _nn_module() -> type:
    from torch import nn

    return nn.Module


class PruneError(PancreasError):
    code = "prune_failed"


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`prune_network`.

    Args:
        ratio: fraction of channels removed from every prunable group (0 < ratio < 1).
        norm: p of the L_p magnitude importance (1 or 2).
        prune_head: also prune the classification head's hidden units (default: keep the head as is).
    """

    ratio: float = 0.3
    norm: int = 2
    prune_head: bool = False


@dataclass
class PruneResult:
    net: Any  # the pruned MultiTaskUNet, rebuilt cleanly from ``config`` (eval mode)
    config: NetworkConfig  # with arch_kwargs_override["features_per_stage"]
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float

    def to_dict(self) -> dict[str, Any]:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "gmacs_before": round(self.macs_before / 1e9, 3), "gmacs_after": round(self.macs_after / 1e9, 3),
                "features_per_stage": self.config.arch_kwargs_override.get("features_per_stage")}


def prune_network(net: Any, plans: dict[str, Any], config: NetworkConfig, patch_size: list[int] | tuple[int, ...],
                  *, prune_config: PruneConfig = PruneConfig()) -> PruneResult:
    """Prune a copy of ``net``; return the pruned network rebuilt from plans + override, with counts.

    The U-Net (encoder + decoder) is pruned through torch-pruning's dependency graph; the head, whose
    pooling mixes channels in ways the graph cannot follow (matmul + flatten), is then sliced to the kept
    encoder channels by :data:`HEAD_SLICERS`.

    Raises:
        PruneError: bad ratio, unknown head, or a pruned network that ``features_per_stage`` cannot describe.
    """
    import torch
    import torch_pruning as tp

    if not 0.0 < prune_config.ratio < 1.0:
        raise PruneError(f"pruning ratio {prune_config.ratio} must be in (0, 1), e.g. prune:0.3")
    if config.head.variant not in HEAD_SLICERS:
        raise PruneError(f"pruning does not know head {config.head.variant!r}; known: {sorted(HEAD_SLICERS)}")
    work = copy.deepcopy(net).eval()
    example = torch.zeros(1, config.input_channels, *[int(p) for p in patch_size])
    params0, macs0 = count_parameters(work), count_macs(work, example)
    work.decoder.deep_supervision = True  # trace every seg layer, also the ones inference does not use
    unet = _UNetOnly(work.encoder, work.decoder)
    outputs = [_stage_output_conv(stage) for stage in work.encoder.stages]
    before = [int(c.out_channels) for c in outputs]
    pruner = tp.pruner.MetaPruner(unet, example, importance=tp.importance.MagnitudeImportance(p=prune_config.norm),
                                  pruning_ratio=prune_config.ratio, ignored_layers=list(work.decoder.seg_layers))
    removed: dict[int, set[int]] = {i: set() for i in range(len(outputs))}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            for i, conv in enumerate(outputs):
                if dep.target.module is conv and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    removed[i].update(int(k) for k in tp._helpers.to_plain_idxs(idxs))
        group.prune()
    work.decoder.deep_supervision = False
    kept = [[k for k in range(before[i]) if k not in removed[i]] for i in range(len(outputs))]
    HEAD_SLICERS[config.head.variant](work.head, kept)
    widths = stage_widths(work)
    new_config = config.model_copy(deep=True)
    new_config.arch_kwargs_override = {**config.arch_kwargs_override, "features_per_stage": widths}
    rebuilt = _rebuild(work, plans, new_config)
    params1, macs1 = count_parameters(rebuilt), count_macs(rebuilt, example)
    logger.info("pruned %.0f%%: params %d -> %d, widths %s", prune_config.ratio * 100, params0, params1, widths)
    return PruneResult(rebuilt, new_config, params0, params1, macs0, macs1)


class _UNetOnly(_nn_module()):  # type: ignore[misc]
    """encoder → decoder, the part torch-pruning traces (the head is sliced separately)."""

    def __init__(self, encoder: Any, decoder: Any) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: Any) -> Any:
        return self.decoder(self.encoder(x))


def _stage_output_conv(stage: Any) -> Any:
    import torch

    return [m for m in stage.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][-1]


def _slice_in(linear: Any, cols: list[int]) -> None:
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.data[:, cols].clone())
    linear.in_features = len(cols)


def _slice_norm(norm: Any, cols: list[int]) -> None:
    """Slice a LayerNorm over features (weight/bias) to ``cols``."""
    import torch

    if norm.weight is not None:
        norm.weight = torch.nn.Parameter(norm.weight.data[cols].clone())
    if norm.bias is not None:
        norm.bias = torch.nn.Parameter(norm.bias.data[cols].clone())
    norm.normalized_shape = (len(cols),)


def _slice_inputs(head: Any, cols_of: Callable[[int, int], list[int]], kept: list[list[int]]) -> None:
    """Slice each stage's input projection (and its LayerNorm, when the head has ``norms``)."""
    norms = getattr(head, "norms", [None] * len(head.stages))
    for proj, norm, s in zip(head.proj, norms, head.stages):
        cols = cols_of(proj.in_features, s)
        if norm is not None:
            _slice_norm(norm, cols)
        _slice_in(proj, cols)


def _slice_proj(head: Any, kept: list[list[int]]) -> None:
    _slice_inputs(head, lambda _n, s: kept[s], kept)


def _slice_mask_proj(head: Any, kept: list[list[int]]) -> None:
    # input = [lesion-pooled C | whole-pooled C]
    _slice_inputs(head, lambda n, s: kept[s] + [n // 2 + k for k in kept[s]], kept)


def _slice_gap(head: Any, kept: list[list[int]]) -> None:
    if isinstance(getattr(head, "norm", None), _nn_module_types()):
        _slice_norm(head.norm, kept[-1])
    _slice_in(head.mlp[0], kept[-1])


def _nn_module_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.LayerNorm,)


#: head variant -> slices the head's encoder-facing inputs to the kept channels of each stage
HEAD_SLICERS: dict[str, Callable[[Any, list[list[int]]], None]] = {
    "gap": _slice_gap,
    "multiscale": _slice_proj,
    "attention": _slice_proj,
    "mask": _slice_mask_proj,
}


def count_parameters(net: Any) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def count_macs(net: Any, example: Any) -> float:
    """Multiply-accumulates of one forward pass on ``example`` (conv, transposed conv, linear)."""
    import torch

    total = [0.0]

    def hook(module: Any, inputs: Any, output: Any) -> None:
        w = module.weight
        if isinstance(module, torch.nn.ConvTranspose3d | torch.nn.ConvTranspose2d):
            total[0] += inputs[0].numel() * w[0].numel()
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            total[0] += output.numel() * w[0].numel()
        else:
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, torch.nn.modules.conv._ConvNd | torch.nn.Linear)]
    try:
        with torch.no_grad():
            net.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def stage_widths(net: Any) -> list[int]:
    """Output width of every encoder stage (the last conv of each stage)."""
    return [int(_stage_output_conv(stage).out_channels) for stage in net.encoder.stages]


def _rebuild(pruned: Any, plans: dict[str, Any], config: NetworkConfig) -> Any:
    """Build a fresh network for ``config`` and load the pruned weights, shape-checked."""
    fresh = build_network(plans, config, deep_supervision=False)
    want, have = fresh.state_dict(), pruned.state_dict()
    bad = [f"{k}: {tuple(have[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
           if k not in have or have[k].shape != v.shape]
    if bad or set(have) != set(want):
        raise PruneError("the pruned network is not described by features_per_stage "
                         f"{config.arch_kwargs_override.get('features_per_stage')} ({len(bad)} mismatches, e.g. "
                         f"{bad[:3]}); prune with a uniform ratio (prune_head=False)")
    fresh.load_state_dict(have, strict=True)
    return fresh.eval()
