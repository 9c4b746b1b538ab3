"""Fold ensembling as a backend: several backends, one averaged answer per batch of patches.

The members' segmentation softmax and class softmax are averaged and returned as log-probabilities.
Log-probabilities are valid logits (``softmax(log p) == p``), so the result keeps the
:class:`~pancreas.backends.Backend` contract and the engine stays unaware of how many folds it runs.
(nnU-Net averages fold *logits*; averaging probabilities is the usual alternative and is what
``pancreas predict`` does across configurations too.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pancreas.errors import BundleError

_TINY = 1e-8


def average_log_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """log(mean_i softmax(logits_i)) over the channel axis (dim 1), in float32."""
    mean = torch.stack([torch.softmax(x.float(), dim=1) for x in logits]).mean(0)
    return torch.log(mean.clamp_min_(_TINY))


class EnsembleBackend:
    """Runs every member on the same batch and averages their probabilities."""

    def __init__(self, members: Sequence[Any]) -> None:
        if not members:
            raise BundleError("an ensemble needs at least one backend")
        patches = {tuple(m.patch_size) for m in members}
        if len(patches) != 1:
            raise BundleError(f"ensemble members have different patch sizes {sorted(patches)}; export all folds "
                              "with the same patch size")
        self.members = list(members)
        first = self.members[0]
        self.name = first.name
        self.precision = first.precision
        self.device = first.device
        self.patch_size = tuple(first.patch_size)
        self.max_batch = min(int(m.max_batch) for m in self.members)
        self.accepts_tensors = all(getattr(m, "accepts_tensors", False) for m in self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __call__(self, patches: Any) -> tuple[Any, Any]:
        outs = [m(patches) for m in self.members]
        native = isinstance(patches, torch.Tensor)
        seg = [o[0] if native else torch.from_numpy(np.asarray(o[0])) for o in outs]
        cls = [o[1] if native else torch.from_numpy(np.asarray(o[1])) for o in outs]
        seg_lp, cls_lp = average_log_probs(seg), average_log_probs(cls)
        if native:
            return seg_lp, cls_lp
        return seg_lp.numpy(), cls_lp.numpy()
