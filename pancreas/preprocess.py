"""nnU-Net v2 preprocessing (and its inverse for export), in torch.

The order of operations is nnU-Net's ``DefaultPreprocessor.run_case_npy``::

    transpose_forward -> crop to the nonzero bounding box -> normalize -> resample to the plans' spacing

and export (``convert_predicted_logits_to_segmentation_with_correct_shape``) undoes it::

    resample logits to the cropped shape -> argmax -> paste into the uncropped array -> transpose_backward

Inputs are canonical ``(z, y, x)`` arrays from :func:`pancreas.nifti.read_volume`; nnU-Net's training data
were written canonicalized the same way, so the plans' ``transpose_forward`` applies on top of them.

**Differences from nnU-Net (documented, covered by the parity test):**

* Cropping: nnU-Net crops to the bounding box of the *hole-filled* nonzero mask. Filling holes never
  changes a bounding box, so we take the bounding box of the nonzero voxels directly (identical result,
  no ``binary_fill_holes`` over the whole CT). For CT this is almost always the whole volume.
* Resampling runs in torch (on the GPU when the tensor is there) instead of scipy/skimage:
  order 3 (data) is torch's separable bicubic convolution (Keys, a = -0.75) instead of a cubic B-spline,
  then clipped to the input range like skimage's ``resize(clip=True)``; order 1 (probabilities) is
  (tri)linear; order 0 is nearest. The coordinate mapping (``align_corners=False``), edge handling (replicate), the separate-z
  rule for anisotropic spacing (``ANISO_THRESHOLD`` 3, in-plane ``order``, out-of-plane ``order_z``)
  and the output shapes are nnU-Net's. Cubic convolution and the B-spline differ by a few HU-fractions
  of a standard deviation at sharp edges; the parity test bounds the difference.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pancreas.errors import BundleError
from pancreas.grid import full_spacing, scaled_shape

logger = logging.getLogger(__name__)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # half-open [start, stop) per axis

ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


@dataclass(frozen=True)
class ResampleSpec:
    """One of nnU-Net's ``resample_data_or_seg_to_shape`` kwarg sets."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any] | None, default: ResampleSpec) -> ResampleSpec:
        kwargs = kwargs or {}
        return cls(order=int(kwargs.get("order", default.order)), order_z=int(kwargs.get("order_z", default.order_z)),
                   force_separate_z=kwargs.get("force_separate_z", default.force_separate_z))


@dataclass(frozen=True)
class PreprocessPlan:
    """What the engine needs from nnU-Net's plans for one configuration.

    ``target_spacing`` is the plans' spacing as written: 3 entries, or for a 2D configuration 2 (in-plane),
    the case keeping its own spacing along the first axis (:meth:`spacing_for`).
    """

    transpose_forward: tuple[int, int, int]
    target_spacing: tuple[float, ...]  # transposed (network) axis order, as in the plans
    normalization: str = "CTNormalization"
    use_mask_for_norm: bool = False
    intensity: dict[str, float] = field(default_factory=dict)
    data: ResampleSpec = ResampleSpec(order=3, order_z=0)
    probabilities: ResampleSpec = ResampleSpec(order=1, order_z=0)

    @classmethod
    def from_plans(cls, plans: dict[str, Any], configuration: str) -> PreprocessPlan:
        """Read transpose, spacing, normalization and resampling options from nnU-Net plans."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        pm = PlansManager(copy.deepcopy(plans))
        cm = pm.get_configuration(configuration)
        c = cm.configuration
        if len(cm.spacing) not in (2, 3) or len(cm.spacing) != len(cm.patch_size):
            raise BundleError(f"configuration {configuration!r} has spacing {cm.spacing} and patch "
                              f"{cm.patch_size}; the engine runs 2D and 3D configurations (2 or 3 entries each)")
        schemes = list(cm.normalization_schemes)
        if len(schemes) != 1:
            raise BundleError(f"configuration {configuration!r} has {len(schemes)} input channels; the engine "
                              "expects a single CT channel")
        props = pm.foreground_intensity_properties_per_channel.get("0", {})
        return cls(transpose_forward=tuple(int(i) for i in pm.transpose_forward),
                   target_spacing=tuple(float(s) for s in cm.spacing), normalization=schemes[0],
                   use_mask_for_norm=bool(cm.use_mask_for_norm[0]),
                   intensity={k: float(v) for k, v in props.items()},
                   data=ResampleSpec.from_kwargs(c.get("resampling_fn_data_kwargs"), ResampleSpec(3, 0)),
                   probabilities=ResampleSpec.from_kwargs(c.get("resampling_fn_probabilities_kwargs"),
                                                          ResampleSpec(1, 0)))

    @property
    def transpose_backward(self) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    @property
    def is_2d(self) -> bool:
        return len(self.target_spacing) == 2

    def spacing_for(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The 3D spacing a case of (transposed) ``spacing`` is resampled to (:func:`pancreas.grid.full_spacing`)."""
        return full_spacing(self.target_spacing, spacing)

    def with_spacing_factor(self, factor: float) -> PreprocessPlan:
        """The same plan at ``factor`` x the target spacing (coarser when > 1), for coarse-to-fine and multi-scale
        TTA (a 2D plan: in-plane)."""
        return replace(self, target_spacing=tuple(s * factor for s in self.target_spacing))


@dataclass
class Preprocessed:
    """A preprocessed case plus what export needs to undo it (all shapes/boxes in transposed axes)."""

    data: torch.Tensor  # [1, D, H, W] float32, normalized, at the target spacing
    bbox: Box  # crop applied to the transposed canonical array
    shape_before_crop: tuple[int, int, int]
    spacing: tuple[float, float, float]  # original spacing, transposed
    target_spacing: tuple[float, float, float]  # the 3D spacing of ``data`` (PreprocessPlan.spacing_for)

    @property
    def shape_after_crop(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.bbox)


# ---- cropping ------------------------------------------------------------------------------------------
def nonzero_bbox(array: np.ndarray) -> Box:
    """Bounding box of the nonzero voxels (== nnU-Net's box of the hole-filled mask); whole array if none."""
    box = []
    for axis in range(array.ndim):
        other = tuple(a for a in range(array.ndim) if a != axis)
        hits = np.flatnonzero(np.any(array != 0, axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, array.shape[axis]))
    return tuple(box)


def intersect(a: Box, b: Box) -> Box:
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    if any(x1 <= x0 for x0, x1 in out):
        raise ValueError(f"boxes {a} and {b} do not overlap")
    return out


def to_slices(box: Box) -> tuple[slice, slice, slice]:
    return tuple(slice(a, b) for a, b in box)


# ---- normalization -------------------------------------------------------------------------------------
def _ct(x: torch.Tensor, props: dict[str, float], mask: torch.Tensor | None) -> torch.Tensor:
    x = x.clamp_(props["percentile_00_5"], props["percentile_99_5"])
    return x.sub_(props["mean"]).div_(max(props["std"], 1e-8))


def _zscore(x: torch.Tensor, props: dict[str, float], mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.sub_(x.mean()).div_(max(float(x.std(correction=0)), 1e-8))
    vals = x[mask]
    x[mask] = (vals - vals.mean()) / max(float(vals.std(correction=0)), 1e-8)
    return x


def _rescale01(x: torch.Tensor, props: dict[str, float], mask: torch.Tensor | None) -> torch.Tensor:
    lo, hi = float(x.min()), float(x.max())
    return x.sub_(lo).div_(max(hi - lo, 1e-8))


NORMALIZERS: dict[str, Callable[[torch.Tensor, dict[str, float], torch.Tensor | None], torch.Tensor]] = {
    "CTNormalization": _ct,
    "ZScoreNormalization": _zscore,
    "NoNormalization": lambda x, props, mask: x,
    "RescaleTo01Normalization": _rescale01,
}


def normalize(x: torch.Tensor, plan: PreprocessPlan, nonzero: torch.Tensor | None = None) -> torch.Tensor:
    """nnU-Net's normalization scheme from the plans, in place on a float tensor."""
    fn = NORMALIZERS.get(plan.normalization)
    if fn is None:
        raise BundleError(f"normalization scheme {plan.normalization!r} is not supported; "
                          f"supported: {sorted(NORMALIZERS)}")
    if plan.normalization == "CTNormalization":
        missing = {"mean", "std", "percentile_00_5", "percentile_99_5"} - set(plan.intensity)
        if missing:
            raise BundleError(f"plans lack foreground intensity properties {sorted(missing)} needed by "
                              "CTNormalization; re-plan the dataset with nnU-Net")
    return fn(x, plan.intensity, nonzero if plan.use_mask_for_norm else None)


# ---- resampling ----------------------------------------------------------------------------------------
def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``, at least one voxel per axis (nnU-Net's would be 0 and fail)."""
    return tuple(max(1, n) for n in scaled_shape(shape, spacing, new_spacing))


def separate_z_axis(spec: ResampleSpec, spacing: Sequence[float], new_spacing: Sequence[float],
                    threshold: float = ANISO_THRESHOLD) -> int | None:
    """nnU-Net's ``determine_do_sep_z_and_axis``: the low-resolution axis resampled apart, or None."""
    def lowres(sp: Sequence[float]) -> list[int]:
        return [i for i, s in enumerate(sp) if max(sp) / s == 1]

    if spec.force_separate_z is not None:
        axes = lowres(spacing) if spec.force_separate_z else []
    elif max(spacing) / min(spacing) > threshold:
        axes = lowres(spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = lowres(new_spacing)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


_MODES_2D = {0: "nearest-exact", 1: "bilinear", 3: "bicubic"}


def resize_axis(x: torch.Tensor, axis: int, size: int, order: int) -> torch.Tensor:
    """Resample ``x`` along one axis (``align_corners=False``, edge replicate) with order 0, 1 or 3.

    Implemented as a 2D interpolation of a ``[lead, 1, n, rest]`` view whose second axis is left alone,
    so it needs no copy when ``axis`` is the first spatial one.
    """
    n = x.shape[axis]
    if n == size:
        return x
    if order not in _MODES_2D:
        raise ValueError(f"interpolation order {order} is not supported; use 0, 1 or 3")
    moved = x.movedim(axis, 1)
    lead, rest = moved.shape[0], moved.shape[2:]
    flat = moved.reshape(lead, 1, n, -1)
    kwargs = {} if order == 0 else {"align_corners": False}
    out = torch.nn.functional.interpolate(flat, size=(size, flat.shape[-1]), mode=_MODES_2D[order], **kwargs)
    return out.reshape(lead, size, *rest).movedim(1, axis)


def resize_inplane(x: torch.Tensor, size: Sequence[int], order: int) -> torch.Tensor:
    """Resample the last two axes of ``[C, D, H, W]`` (each D slice on its own, like nnU-Net's 2D resize)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if order not in _MODES_2D:
        raise ValueError(f"interpolation order {order} is not supported; use 0, 1 or 3")
    kwargs = {} if order == 0 else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=tuple(size), mode=_MODES_2D[order], **kwargs)


def resample(x: torch.Tensor, new_shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float],
             spec: ResampleSpec, *, clip: bool = False) -> torch.Tensor:
    """nnU-Net's ``resample_data_or_seg_to_shape`` for a float tensor ``[C, D, H, W]`` (see module doc).

    ``clip`` clamps the result to the input's range like skimage (per slice when z is resampled apart).
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(x.shape[1:]) == new_shape:
        return x
    axis = separate_z_axis(spec, spacing, new_spacing)
    if axis is None:
        if spec.order == 1:
            return torch.nn.functional.interpolate(x[None], size=new_shape, mode="trilinear", align_corners=False)[0]
        if spec.order == 0:
            return torch.nn.functional.interpolate(x[None], size=new_shape, mode="nearest-exact")[0]
        lo, hi = (x.amin(), x.amax()) if clip else (None, None)
        out = resize_axis(resize_inplane(x, new_shape[1:], spec.order), 1, new_shape[0], spec.order)
        return out.clamp_(lo, hi) if clip else out
    perm = [0, axis + 1] + [a for a in (1, 2, 3) if a != axis + 1]  # separate axis first
    moved = x.permute(perm) if axis else x
    target = [new_shape[p - 1] for p in perm[1:]]
    out = resize_inplane(moved, target[1:], spec.order)
    if clip and spec.order > 1:
        lo, hi = moved.amin(dim=(2, 3), keepdim=True), moved.amax(dim=(2, 3), keepdim=True)
        out = torch.minimum(torch.maximum(out, lo), hi)
    out = resize_axis(out, 1, target[0], spec.order_z)
    return out.permute(list(np.argsort(perm))).contiguous() if axis else out


# ---- the pipeline --------------------------------------------------------------------------------------
def preprocess(array: np.ndarray, spacing: Sequence[float], plan: PreprocessPlan, *,
               device: torch.device | str = "cpu", roi: Box | None = None) -> Preprocessed:
    """Canonical ``(z, y, x)`` CT + spacing -> network input at the plan's spacing.

    ``roi`` (transposed axes) further restricts the crop; it is used by coarse-to-fine.
    """
    arr = np.transpose(array, plan.transpose_forward)
    sp = tuple(float(spacing[i]) for i in plan.transpose_forward)
    box = nonzero_bbox(arr)
    if roi is not None:
        box = intersect(box, roi)
    view = arr[to_slices(box)]
    src = torch.from_numpy(view)
    x = torch.empty((1, *view.shape), dtype=torch.float32, device=device)
    x[0].copy_(src)  # one contiguous copy (on the device): the caller's array is never modified
    nonzero = None
    if plan.use_mask_for_norm:
        from scipy.ndimage import binary_fill_holes

        nonzero = torch.from_numpy(binary_fill_holes(view != 0)).to(device)[None]
    x = normalize(x, plan, nonzero)
    target = plan.spacing_for(sp)
    new_shape = compute_new_shape(x.shape[1:], sp, target)
    x = resample(x, new_shape, sp, target, plan.data, clip=True)
    return Preprocessed(data=x.contiguous(), bbox=box, shape_before_crop=tuple(arr.shape), spacing=sp,
                        target_spacing=target)


def logits_to_crop(logits: torch.Tensor, pre: Preprocessed, plan: PreprocessPlan) -> torch.Tensor:
    """Resample network-space logits ``[C, D, H, W]`` back to the cropped original grid (transposed axes)."""
    return resample(logits.float(), pre.shape_after_crop, pre.target_spacing, pre.spacing, plan.probabilities)


def argmax_labels(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(0)`` as uint8 (first maximum wins), by channel comparisons: ~10x faster on CPU."""
    best = logits[0].clone()
    labels = torch.zeros(logits.shape[1:], dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        better = logits[c] > best
        labels.masked_fill_(better, c)
        torch.maximum(best, logits[c], out=best)
    return labels


def paste_canonical(crop: np.ndarray, pre: Preprocessed, plan: PreprocessPlan, fill: float = 0) -> np.ndarray:
    """Put a cropped result (``[..., *shape_after_crop]``) back into the canonical (untransposed) array."""
    lead = crop.shape[:-3]
    full = np.full((*lead, *pre.shape_before_crop), fill, dtype=crop.dtype)
    full[(..., *to_slices(pre.bbox))] = crop
    k = len(lead)
    return np.ascontiguousarray(np.transpose(full, (*range(k), *(k + i for i in plan.transpose_backward))))
