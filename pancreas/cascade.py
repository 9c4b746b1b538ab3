"""A cascade's extra input: the previous stage's label map as one-hot channels on the next stage's grid.

nnU-Net's ``3d_cascade_fullres`` takes the CT plus one channel per foreground label of the ``3d_lowres``
prediction. nnU-Net exports the low-res prediction on the original grid, preprocesses it together with the
image (``DefaultPreprocessor.run_case`` with a ``seg_file``: transpose, crop to the image's box,
``resampling_fn_seg``) and one-hot encodes it (``convert_labelmap_to_one_hot``). :func:`previous_stage_channels`
does the same in torch on the engine's :class:`~pancreas.preprocess.Preprocessed` record. The segmentation
resampling is batchgenerators' ``resize_segmentation``: each label's indicator is resampled with the plans'
``resampling_fn_seg_kwargs`` (order 1 in-plane; ``order_z`` across a separately resampled z axis), every voxel
takes the label with the largest indicator, and exact ties go to the nearest-neighbour label (its
``seg_tiebreak='nearest'``).

One documented difference: nnU-Net relabels background voxels outside the image's hole-filled nonzero mask
``-1`` before resampling, a third "label" that only matters where foreground touches zero-valued voxels
connected to the image border, which CT (air at -1000 HU) does not have.

Which stage answers what: the mask and the subtype come from the last (full-res) stage, whose classification
head sees the CT at full resolution plus the low-res mask; the low-res stage's subtype is not used.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pancreas import FOREGROUND_LABELS
from pancreas.preprocess import Preprocessed, PreprocessPlan, ResampleSpec, resample, to_slices


def segmentation_spec(plans: dict[str, Any], configuration: str) -> ResampleSpec:
    """The plans' ``resampling_fn_seg_kwargs`` of ``configuration`` (inheritance resolved)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    conf = PlansManager(copy.deepcopy(plans)).get_configuration(configuration).configuration
    return ResampleSpec.from_kwargs(conf.get("resampling_fn_seg_kwargs"), ResampleSpec(order=1, order_z=0))


def resample_labels(labels: torch.Tensor, new_shape: Sequence[int], spacing: Sequence[float],
                    new_spacing: Sequence[float], spec: ResampleSpec) -> torch.Tensor:
    """nnU-Net's ``resample_data_or_seg_to_shape(is_seg=True)`` of a label map ``[D, H, W]`` (see module doc)."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(labels.shape) == new_shape:
        return labels
    nearest_spec = ResampleSpec(order=0, order_z=0, force_separate_z=spec.force_separate_z)
    nearest = resample(labels[None].float(), new_shape, spacing, new_spacing, nearest_spec)[0].round().long()
    if spec.order == 0:
        return nearest
    values = torch.unique(labels)  # sorted
    indicators = torch.stack([(labels == v) for v in values]).float()
    scores = resample(indicators, new_shape, spacing, new_spacing, spec)
    top, winner = scores.max(0)  # first maximum: the lowest tied label
    near_index = torch.searchsorted(values.contiguous(), nearest.contiguous())
    near_index = near_index.clamp_(max=len(values) - 1)
    near_score = scores.gather(0, near_index[None])[0]
    tied = (scores == top).sum(0) > 1
    winner = torch.where(tied & (near_score == top) & (values[near_index] == nearest), near_index, winner)
    return values[winner]


def previous_stage_channels(labels: np.ndarray, pre: Preprocessed, plan: PreprocessPlan, spec: ResampleSpec,
                            foreground: Sequence[int] = FOREGROUND_LABELS) -> torch.Tensor:
    """One-hot ``[len(foreground), D, H, W]`` float32 of a canonical label map, on ``pre.data``'s grid and device.

    ``labels`` is the previous stage's (not post-processed) label map on the canonical grid of the same volume.
    """
    if labels.shape != tuple(pre.shape_before_crop[i] for i in plan.transpose_backward):
        raise ValueError(f"previous-stage labels of shape {labels.shape} are not on this volume's canonical grid")
    crop = np.ascontiguousarray(np.transpose(labels, plan.transpose_forward)[to_slices(pre.bbox)])
    seg = torch.from_numpy(crop.astype(np.int64, copy=False)).to(pre.data.device)
    seg = resample_labels(seg, pre.data.shape[1:], pre.spacing, pre.target_spacing, spec)
    return torch.stack([(seg == c) for c in foreground]).to(torch.float32)


def with_previous_stage(pre: Preprocessed, labels: np.ndarray, plan: PreprocessPlan,
                        spec: ResampleSpec) -> Preprocessed:
    """``pre`` with the previous stage's one-hot channels appended to its data (``[1 + F, D, H, W]``)."""
    pre.data = torch.cat([pre.data, previous_stage_channels(labels, pre, plan, spec)]).contiguous()
    return pre


def part_timings(total: dict[str, float], previous: dict[str, float]) -> dict[str, float]:
    """This stage's own stage timings: ``total`` minus the previous stage's, plus its ``total``."""
    own = {k: max(0.0, v - previous.get(k, 0.0)) for k, v in total.items() if k != "total"}
    own = {k: v for k, v in own.items() if v > 0 or k not in previous}
    return {**own, "total": sum(own.values())}
