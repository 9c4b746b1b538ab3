"""The patch the sliding window tiles with, for 3D and 2D networks, and how many go in one batch.

A 3D configuration's patch is ``(d, h, w)``. A 2D configuration's network patch is ``(h, w)``: nnU-Net runs it
on every slice along the first (transposed) axis, and the sliding window sees it as the **slice patch**
``(1, h, w)``, so the engine, its tiling and its batches stay three-dimensional
(:class:`pancreas.backends.slices.SliceBackend` converts ``[B,C,1,h,w]`` <-> ``[B,C,h,w]`` at the network).
Torch-free: the TensorRT builder uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence

#: A slice holds ~1/depth of a 3D patch's voxels: a batch of a 2D network's slices is this many times larger
#: than ``EngineConfig.batch_size`` (nnU-Net's 2D plans likewise batch ~10x more patches than its 3D plans).
SLICE_BATCH_FACTOR = 8


def is_slice_patch(patch: Sequence[int]) -> bool:
    """Whether ``patch`` is a 2D network's: ``(h, w)``, or the window's ``(1, h, w)``."""
    return len(patch) == 2 or (len(patch) == 3 and int(patch[0]) == 1)


def window_patch(patch: Sequence[int]) -> tuple[int, int, int]:
    """The sliding window's patch for a network patch: ``(h, w)`` -> ``(1, h, w)``; a 3D patch as is."""
    if len(patch) not in (2, 3):
        raise ValueError(f"patch {tuple(patch)} must have 2 (2D network) or 3 (3D network) entries")
    return tuple(int(p) for p in ((1, *patch) if len(patch) == 2 else patch))  # type: ignore[return-value]


def tiles_per_batch(batch_size: int, patch: Sequence[int]) -> int:
    """Patches per backend call for ``EngineConfig.batch_size``: ``SLICE_BATCH_FACTOR`` x more for slices."""
    return int(batch_size) * (SLICE_BATCH_FACTOR if is_slice_patch(patch) else 1)
