"""Post-processing of a predicted label map (0 background, 1 pancreas, 2 lesion).

Two steps, each optional (:class:`PostprocessConfig`):

1. **Largest component of the whole pancreas** (labels 1 ∪ 2, 26-connectivity) is kept: pancreas voxels
   (label 1) outside it are removed, as nnU-Net's ``remove_all_but_largest_component`` does for the union
   region. With ``min_component_fraction`` f, the pancreas voxels of every component of at least f times
   the largest one's size are kept too (a gland predicted in pieces keeps them), largest first, each only
   when it lies within ``max_piece_distance_mm`` of the largest component and while the whole pancreas
   stays at or under ``max_total_ml`` (both optional): an uncropped CT's false pieces in other organs are
   far away or too big. The engine fills ``max_total_ml`` from the bundle's training domain. Lesions still
   refer to the largest component (step 2).
2. **Lesions next to the pancreas:** a lesion component (label 2) is kept only when it lies inside, or
   within ``lesion_margin_mm`` of, the pancreas (the largest component with step 1, else all label-1
   voxels); others become background. With step 2 off, step 1 also removes every lesion voxel outside the
   kept components. When there is no pancreas to refer to, lesions are left alone.

All work happens inside the bounding box of the foreground (plus the margin), so full-size CTs with a
small pancreas are cheap. Bundles record their choice in ``metadata.inference["postprocessing"]``
(keys of :class:`PostprocessConfig`); :meth:`PostprocessConfig.from_metadata` reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from pancreas import LABELS
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

PANCREAS, LESION = LABELS["pancreas"], LABELS["lesion"]
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass(frozen=True)
class PostprocessConfig:
    largest_component: bool = True
    #: with ``largest_component``: also keep the pancreas voxels of every component of at least this fraction
    #: of the largest one's size (None: the largest only), so a gland predicted in pieces keeps its pieces
    min_component_fraction: float | None = None
    #: with ``min_component_fraction``: a piece is kept only within this distance (mm) of the largest component
    max_piece_distance_mm: float | None = None
    #: with ``min_component_fraction``: pieces are added only while the kept pancreas stays <= this volume (mL)
    max_total_ml: float | None = None
    lesion_near_pancreas: bool = True
    lesion_margin_mm: float = 3.0

    @classmethod
    def from_metadata(cls, inference: dict[str, Any] | None) -> PostprocessConfig:
        """Options recorded by training under ``inference["postprocessing"]`` (unknown keys rejected)."""
        opts = dict((inference or {}).get("postprocessing") or {})
        known = {f.name for f in fields(cls)}
        unknown = set(opts) - known
        if unknown:
            raise PancreasError(f"unknown postprocessing option(s) {sorted(unknown)} in bundle metadata; "
                                f"known: {sorted(known)}")
        return cls(**opts)

    def __post_init__(self) -> None:
        f = self.min_component_fraction
        if f is not None and not (isinstance(f, (int, float)) and 0.0 < f <= 1.0):
            raise PancreasError(f"min_component_fraction {f!r}: need a number in (0, 1] or null")
        for name in ("max_piece_distance_mm", "max_total_ml"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                raise PancreasError(f"{name} {v!r}: need a positive number or null")

    @property
    def enabled(self) -> bool:
        return self.largest_component or self.lesion_near_pancreas


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    slices = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        slices.append(slice(max(int(hits[0]) - margin[axis], 0),
                            min(int(hits[-1]) + 1 + margin[axis], mask.shape[axis])))
    return tuple(slices)


def gland_pieces(fg: np.ndarray, spacing: Sequence[float], config: PostprocessConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(largest, kept)`` boolean masks of the foreground ``fg``: its largest 26-connected component, and that
    plus the pieces :class:`PostprocessConfig` keeps (at least ``min_component_fraction`` x the largest,
    largest first, within ``max_piece_distance_mm`` of it, while the total stays <= ``max_total_ml``)."""
    labels, n = ndimage.label(fg, structure=_STRUCTURE)
    if n == 0:
        return fg.copy(), fg.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = int(np.argmax(sizes))
    largest = labels == big
    if config.min_component_fraction is None or n == 1:
        return largest, largest
    order = [int(i) for i in np.argsort(-sizes, kind="stable")
             if i != big and sizes[i] > 0 and sizes[i] >= config.min_component_fraction * sizes[big]]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    total = sizes[big] * voxel_ml
    distance = ndimage.distance_transform_edt(~largest, sampling=spacing) \
        if config.max_piece_distance_mm is not None and order else None
    keep = [big]
    for i in order:
        if distance is not None and float(distance[labels == i].min()) > config.max_piece_distance_mm + 1e-6:
            continue
        if config.max_total_ml is not None and total + sizes[i] * voxel_ml > config.max_total_ml:
            continue
        keep.append(i)
        total += sizes[i] * voxel_ml
    return largest, np.isin(labels, keep)


def keep_lesions_near(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                      margin_mm: float) -> np.ndarray:
    """Remove lesion components (label 2) farther than ``margin_mm`` from ``reference`` (in place).

    Components overlapping ``reference`` are kept without any distance computation; the distance
    transform runs only over the bounding box (plus margin) of the components outside it.
    """
    lesion = mask == LESION
    if not lesion.any():
        return mask
    labels, _ = ndimage.label(lesion, structure=_STRUCTURE)
    inside = np.unique(labels[reference & (labels > 0)])
    outside = (labels > 0) & ~np.isin(labels, inside)
    margin = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    box = _bbox(outside, margin)
    if box is None:
        return mask
    sub_ref, sub_labels = reference[box], np.where(outside[box], labels[box], 0)
    if margin_mm <= 0:
        near = ndimage.binary_dilation(sub_ref, structure=_STRUCTURE)
    elif sub_ref.any():
        near = ndimage.distance_transform_edt(~sub_ref, sampling=spacing) <= margin_mm + 1e-6
    else:
        near = np.zeros_like(sub_ref)
    keep = np.unique(sub_labels[near & (sub_labels > 0)])
    mask[outside & ~np.isin(labels, keep)] = 0
    return mask


def postprocess(mask: np.ndarray, spacing: Sequence[float], config: PostprocessConfig = PostprocessConfig()
                ) -> np.ndarray:
    """Apply :class:`PostprocessConfig` to a label map ``(z, y, x)``; returns a new uint8 array."""
    out = np.array(mask, dtype=np.uint8, copy=True)
    if not config.enabled:
        return out
    margin = [int(np.ceil(config.lesion_margin_mm / s)) + 1 for s in spacing]
    box = _bbox(out > 0, margin)
    if box is None:
        return out
    sub = out[box]  # a view: edits land in ``out``
    if config.largest_component:
        reference, kept = gland_pieces(sub > 0, spacing, config)
        sub[(sub == PANCREAS) & ~kept] = 0
    else:
        reference = kept = sub == PANCREAS
    if config.lesion_near_pancreas and reference.any():
        keep_lesions_near(sub, reference, spacing, config.lesion_margin_mm)
    elif config.largest_component:
        sub[~kept] = 0
    return out
