"""A 2D network's backend seen as a 3D one: slice patches ``[B,C,1,h,w]`` in, ``[B,3,1,h,w]`` logits out.

The sliding window always tiles with three-dimensional patches; a 2D network's patch is the slice ``(1, h, w)``
(:mod:`pancreas.patch`). :func:`for_window` wraps any backend whose patch has two entries (torch, onnxruntime,
TensorRT; :func:`pancreas.backends.create_backend` does this for every member) and leaves 3D backends alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pancreas.patch import window_patch


class SliceBackend:
    """Drops the unit slice axis on the way in and restores it on the way out; everything else is the inner's."""

    def __init__(self, inner: Any) -> None:
        if len(inner.patch_size) != 2:
            raise ValueError(f"SliceBackend wraps a 2D network's backend; {inner.name} has patch {inner.patch_size}")
        self.inner = inner
        self.network_patch = tuple(int(p) for p in inner.patch_size)
        self.patch_size = window_patch(self.network_patch)

    def __getattr__(self, name: str) -> Any:  # name, precision, device, max_batch, accepts_tensors, network...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, patches: Any) -> tuple[Any, Any]:
        if patches.ndim != 5 or patches.shape[2] != 1:
            raise ValueError(f"slice patches must be [B,C,1,h,w], got shape {tuple(patches.shape)}")
        seg, cls = self.inner(patches[:, :, 0])
        if isinstance(seg, torch.Tensor):
            return seg.unsqueeze(2), cls
        return np.expand_dims(seg, 2), cls


def for_window(backend: Any) -> Any:
    """``backend`` as the sliding window runs it: a 2D network's wrapped in :class:`SliceBackend`."""
    return SliceBackend(backend) if len(backend.patch_size) == 2 else backend
