"""The grid the network runs on: an input resampled to the bundle's spacing, and the bounds on it.

One bound, :class:`GridLimits`, checked by :meth:`pancreas.engine.Engine.check_input` before any
preprocessing and by the service before a request is queued (torch-free, so the service imports it cheaply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pancreas.errors import InvalidImageError


class PreprocessPlan(Protocol):
    """What the grid needs of :class:`pancreas.preprocess.PreprocessPlan` (no import: preprocess uses this module)."""

    transpose_forward: Sequence[int]
    target_spacing: Sequence[float]  # 3 entries, or 2 (in-plane) for a 2D configuration: see full_spacing


@dataclass(frozen=True)
class GridLimits:
    """Bounds on the grid the network runs on: the input resampled to the plans' spacing.

    The engine checks them before it preprocesses, and the service before it queues a request
    (:func:`check_grid`), so a tiny upload at a huge spacing cannot ask for billions of voxels.
    ``max_voxels`` bounds the resampled grid; ``max_upsampling`` bounds resampled / input voxels once the
    grid exceeds ``free_voxels`` (a small crop may still be upsampled to a patch or two).
    """

    max_voxels: int = 512 ** 3
    max_upsampling: float = 64.0
    free_voxels: int = 128 ** 3


def scaled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: ``round(spacing / new_spacing * shape)`` per axis (may be 0)."""
    return tuple(round(float(s) / float(n) * int(k)) for s, n, k in zip(spacing, new_spacing, shape))


def full_spacing(target_spacing: Sequence[float], spacing: Sequence[float]) -> tuple[float, float, float]:
    """The 3D spacing a case is resampled to, given the plans' ``target_spacing`` and the case's own ``spacing``
    (both transposed): a 2D configuration's plans give the in-plane spacing only and keep the case's spacing
    along the first axis (nnU-Net's ``DefaultPreprocessor``: ``[original_spacing[0], *target_spacing]``)."""
    if len(target_spacing) == 2:
        return float(spacing[0]), float(target_spacing[0]), float(target_spacing[1])
    if len(target_spacing) != 3:
        raise ValueError(f"target spacing {tuple(target_spacing)} must have 2 (2D) or 3 (3D) entries")
    return tuple(float(s) for s in target_spacing)  # type: ignore[return-value]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], plan: PreprocessPlan) -> tuple[int, int, int]:
    """Shape (transposed axes) of a canonical ``(z, y, x)`` grid resampled to the plan's spacing, uncropped."""
    order = plan.transpose_forward
    sp = [spacing[i] for i in order]
    return scaled_shape([shape[i] for i in order], sp, full_spacing(plan.target_spacing, sp))


def check_grid(shape: Sequence[int], spacing: Sequence[float], plan: PreprocessPlan,
               limits: GridLimits) -> tuple[int, int, int]:
    """Refuse an input whose resampled grid is empty along an axis or exceeds ``limits``; return the grid."""
    grid = resampled_shape(shape, spacing, plan)
    extent = tuple(round(float(spacing[i]) * int(shape[i]), 3) for i in plan.transpose_forward)
    if min(grid) < 1:
        raise InvalidImageError(
            f"the image spans {extent} mm, less than one voxel of the model's {tuple(plan.target_spacing)} mm "
            "spacing along an axis; send a 3D CT that covers the anatomy", code="too_small")
    voxels, given = int(np.prod(grid, dtype=np.int64)), int(np.prod(shape, dtype=np.int64))
    if voxels > limits.max_voxels or (voxels > limits.free_voxels and voxels > limits.max_upsampling * given):
        raise InvalidImageError(
            f"the image ({tuple(int(s) for s in shape)} voxels spanning {extent} mm) resamples to {grid} = "
            f"{voxels} voxels at the model's {tuple(plan.target_spacing)} mm spacing, over the limit of "
            f"{limits.max_voxels} voxels and {limits.max_upsampling:g}x the input's; check the header's "
            "spacing (pixdim) or crop the CT", code="resampled_too_large")
    return grid
