"""Lesion-subtype classification heads on top of a shared nnU-Net encoder.

Every head is an ``nn.Module`` with the same call signature::

    head(skips: list[Tensor], seg_logits: Tensor) -> Tensor[B, num_classes]

``skips`` are the encoder outputs, highest resolution first (bottleneck last), exactly as nnU-Net's
encoders return them; ``seg_logits`` are the decoder's full-resolution segmentation logits (only the
``mask`` head uses them). Heads are looked up by :attr:`pancreas.bundle.HeadConfig.variant` in
:data:`HEADS`; there is no data-dependent Python control flow in any ``forward`` (ONNX export and
``torch.compile`` work).

Pooled descriptors are layer-normalized before the MLP: encoder activations pooled over a region are
small and similar across cases, and without normalization the head starts far slower (measured).

Variants:

* ``gap``        global average pooling of the bottleneck, then an MLP.
* ``multiscale`` global average pooling of several encoder stages, each projected, concatenated, MLP.
* ``attention``  ``num_queries`` learned queries attend over the tokens of several encoder stages
  (single-head scaled dot-product attention, projected tokens), concatenated queries, MLP.
* ``mask``       segmentation → classification fusion: encoder features pooled with weights taken from
  the decoder's softmax. Two pooled vectors per stage: one weighted by the lesion probability plus a
  small share (``_FALLBACK``) of the whole-pancreas probability, one weighted by the whole-pancreas
  probability. **A patch that misses the lesion** therefore still yields a well-defined descriptor: the
  lesion-weighted pooling degrades smoothly to pancreas-weighted pooling instead of dividing by ~0.
  The probabilities are detached, so the classification loss does not pull the segmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pancreas.errors import PancreasError

_EPS = 1e-6
_FALLBACK = 0.1  # share of the whole-pancreas probability in the lesion pooling weights

_AVG_POOL: dict[int, Callable[..., Tensor]] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _gap(x: Tensor) -> Tensor:
    """Global average pooling over all spatial axes: [B,C,*S] -> [B,C]."""
    return x.flatten(2).mean(-1)


def _mlp(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def resolve_stages(stages: Sequence[int] | None, n_stages: int) -> list[int]:
    """Validate the encoder stage indices a head uses (``None``: the last three). Negative indices allowed."""
    if stages is None:
        stages = list(range(max(0, n_stages - 3), n_stages))
    resolved = []
    for s in stages:
        idx = s + n_stages if s < 0 else s
        if not 0 <= idx < n_stages:
            raise PancreasError(f"head stage {s} is out of range for an encoder with {n_stages} stages; "
                                f"use indices 0..{n_stages - 1} (or negative from the bottleneck)")
        resolved.append(idx)
    return resolved


class GAPHead(nn.Module):
    """Global average pooling of the bottleneck features."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, hidden: int = 64,
                 dropout: float = 0.2, stages: Sequence[int] | None = None, num_queries: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels[-1])
        self.mlp = _mlp(channels[-1], hidden, num_classes, dropout)

    def forward(self, skips: list[Tensor], seg_logits: Tensor) -> Tensor:
        return self.mlp(self.norm(_gap(skips[-1])))


class MultiScaleHead(nn.Module):
    """Pooled features of several encoder stages, each projected to ``hidden``, concatenated."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, hidden: int = 64,
                 dropout: float = 0.2, stages: Sequence[int] | None = None, num_queries: int = 4) -> None:
        super().__init__()
        self.stages = resolve_stages(stages, len(channels))
        self.norms = nn.ModuleList(nn.LayerNorm(channels[s]) for s in self.stages)
        self.proj = nn.ModuleList(nn.Linear(channels[s], hidden) for s in self.stages)
        self.mlp = _mlp(hidden * len(self.stages), hidden, num_classes, dropout)

    def forward(self, skips: list[Tensor], seg_logits: Tensor) -> Tensor:
        feats = [F.leaky_relu(p(n(_gap(skips[s]))), 0.01) for p, n, s in zip(self.proj, self.norms, self.stages)]
        return self.mlp(torch.cat(feats, dim=1))


class AttentionHead(nn.Module):
    """Learned-query attention pooling over the tokens (voxels) of several encoder stages."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, hidden: int = 64,
                 dropout: float = 0.2, stages: Sequence[int] | None = None, num_queries: int = 4) -> None:
        super().__init__()
        self.stages = resolve_stages(stages, len(channels))
        self.proj = nn.ModuleList(nn.Linear(channels[s], hidden) for s in self.stages)
        self.level = nn.Parameter(torch.zeros(len(self.stages), hidden))  # learned stage embedding
        self.queries = nn.Parameter(torch.randn(num_queries, hidden) * hidden ** -0.5)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.scale = hidden ** -0.5
        self.mlp = _mlp(hidden * num_queries, hidden, num_classes, dropout)

    def forward(self, skips: list[Tensor], seg_logits: Tensor) -> Tensor:
        tokens = [p(skips[s].flatten(2).transpose(1, 2)) + self.level[i]
                  for i, (p, s) in enumerate(zip(self.proj, self.stages))]
        t = self.norm(torch.cat(tokens, dim=1))                         # [B, N, hidden]
        attn = torch.softmax(torch.matmul(self.key(t), self.queries.t()) * self.scale, dim=1)  # [B, N, Q]
        pooled = torch.matmul(attn.transpose(1, 2), self.value(t))      # [B, Q, hidden]
        return self.mlp(pooled.flatten(1))


class MaskGuidedHead(nn.Module):
    """Encoder features pooled with the decoder's lesion / whole-pancreas probabilities (seg → cls fusion)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], num_classes: int, *, hidden: int = 64,
                 dropout: float = 0.2, stages: Sequence[int] | None = None, num_queries: int = 4) -> None:
        super().__init__()
        self.stages = resolve_stages(stages, len(channels))
        self.factors = [list(_cumulative(strides, s)) for s in self.stages]
        self.norms = nn.ModuleList(nn.LayerNorm(2 * channels[s]) for s in self.stages)
        self.proj = nn.ModuleList(nn.Linear(2 * channels[s], hidden) for s in self.stages)
        self.mlp = _mlp(hidden * len(self.stages), hidden, num_classes, dropout)

    def forward(self, skips: list[Tensor], seg_logits: Tensor) -> Tensor:
        prob = torch.softmax(seg_logits.detach().float(), dim=1)
        whole = prob[:, 1:].sum(1, keepdim=True)                          # pancreas + lesion
        lesion = prob[:, 2:3] + _FALLBACK * whole
        weights = torch.cat([lesion, whole], dim=1)                       # [B, 2, *S]
        feats = []
        for proj, norm, s, factor in zip(self.proj, self.norms, self.stages, self.factors):
            pooled = _weighted_pool(skips[s], _downsample(weights, factor))  # [B, C, 2], float32
            feats.append(F.leaky_relu(proj(norm(pooled.transpose(1, 2).flatten(1))), 0.01))
        return self.mlp(torch.cat(feats, dim=1))


def _weighted_pool(features: Tensor, weights: Tensor) -> Tensor:
    """Weighted means of ``features`` [B,C,*S] under ``weights`` [B,K,*S] -> [B,C,K], always in float32.

    The sum runs over every voxel of the stage (10^5-10^6 at full resolution): in float16 (autocast) the
    voxel x feature products overflow to inf and the subtype probabilities become NaN, so autocast is
    switched off here and both operands are upcast.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = features.float().flatten(2)                                   # [B, C, N]
        w = weights.float().flatten(2)                                    # [B, K, N]
        return torch.matmul(f, w.transpose(1, 2)) / (w.sum(-1).unsqueeze(1) + _EPS)


def _cumulative(strides: Sequence[Sequence[int]], stage: int) -> tuple[int, ...]:
    """Total downsampling factor per axis of encoder stage ``stage`` relative to the input."""
    total = [1] * len(strides[0])
    for st in strides[: stage + 1]:
        total = [t * int(s) for t, s in zip(total, st)]
    return tuple(total)


def _downsample(x: Tensor, factor: Sequence[int]) -> Tensor:
    """Average-pool ``x`` by a static per-axis factor (a no-op for factor 1)."""
    if all(f == 1 for f in factor):
        return x
    return _AVG_POOL[len(factor)](x, kernel_size=list(factor), stride=list(factor))


HeadFactory = Callable[..., nn.Module]

#: HeadConfig.variant -> head class
HEADS: dict[str, HeadFactory] = {
    "gap": GAPHead,
    "multiscale": MultiScaleHead,
    "attention": AttentionHead,
    "mask": MaskGuidedHead,
}


def build_head(variant: str, channels: Sequence[int], strides: Sequence[Sequence[int]], num_classes: int,
               *, hidden: int = 64, dropout: float = 0.2, stages: Sequence[int] | None = None,
               num_queries: int = 4) -> nn.Module:
    """Build the head named ``variant`` for an encoder with ``channels``/``strides`` per stage."""
    if variant not in HEADS:
        raise PancreasError(f"unknown classification head {variant!r}; choose one of {sorted(HEADS)}")
    return HEADS[variant](list(channels), [list(s) for s in strides], num_classes, hidden=hidden,
                          dropout=dropout, stages=stages, num_queries=num_queries)
