"""Segmentation and classification metrics: DSC, NSD, HD95, macro-F1, confusion matrix.

All surface metrics are computed in physical millimetres: ``spacing`` is the voxel size in the
array's own (numpy) axis order, so anisotropic CT (e.g. 2.0 x 0.73 x 0.73 mm) is handled exactly.

Definitions (following Metrics Reloaded, Maier-Hein et al., Nat. Methods 2024):

* **Boundary voxels** of a mask are the foreground voxels with at least one 6-connected background
  neighbour; voxels on the array's edge count as boundary.
* **Surface distances** are the Euclidean distances (mm) from each boundary voxel of one mask to the
  nearest boundary voxel of the other (``scipy.ndimage.distance_transform_edt`` with ``sampling``).
* **HD95** = max(P95(pred->ref), P95(ref->pred)), with numpy's linear-interpolation percentile.
* **NSD@tau** = (#pred boundary voxels within tau of ref + #ref boundary voxels within tau of pred)
  / (#pred boundary voxels + #ref boundary voxels). The tolerance test is inclusive (``d <= tau``).
* **Macro-F1** is the unweighted mean of the per-class F1 over ``labels``; a class that is neither
  present nor predicted is left out of the mean. Predictions outside ``labels`` (e.g. ``-1`` for a
  missing prediction) count as a miss for the true class and as a false positive for no class.

Empty-mask conventions (Metrics Reloaded leaves "both empty" to the user; we choose explicitly):

* reference and prediction both empty: DSC = NSD = 1.0, HD95 = 0.0 (a perfect answer);
* exactly one of them empty: DSC = NSD = 0.0, HD95 = NaN (undefined; reported as ``null`` and left
  out of the HD95 mean, and the number of such cases is reported).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Written verbatim into evaluation reports so every number can be interpreted.
CONVENTIONS: dict[str, str] = {
    "both_empty": "DSC = NSD = 1.0 and HD95 = 0.0 when reference and prediction are both empty",
    "one_empty": (
        "DSC = NSD = 0.0 and HD95 = NaN (null) when exactly one of reference/prediction is empty; "
        "NaN HD95 values are excluded from the HD95 mean and counted in hd95_undefined"
    ),
    "hd95": "max of the two directed 95th percentiles of boundary-voxel distances (mm, linear interpolation)",
    "nsd": "fraction of boundary voxels of both masks within the tolerance (d <= tau mm) of the other's boundary",
    "boundary": "foreground voxels with a 6-connected background neighbour; array edges count as background",
    "macro_f1": "mean per-class F1 over the classes present in truth or prediction; missing predictions are misses",
    "missing_prediction": "a missing mask is scored as an empty prediction",
}

_FACE = ndimage.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks; 1.0 when both are empty."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    _check_shapes(p, r)
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances in mm: ``(pred -> ref, ref -> pred)``.

    Both arrays are empty when either mask is empty (the distance is then undefined).
    """
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    _check_shapes(p, r)
    spacing = _check_spacing(spacing, p.ndim)
    if not p.any() or not r.any():
        return np.empty(0), np.empty(0)
    p, r = _crop_to_union(p, r)
    p_border, r_border = _boundary(p), _boundary(r)
    to_ref = ndimage.distance_transform_edt(~r_border, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~p_border, sampling=spacing)
    return to_ref[p_border], to_pred[r_border]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (0.0 if both empty, NaN if exactly one is empty)."""
    empty = _empty_case(pred, ref)
    if empty is not None:
        return 0.0 if empty else float("nan")
    return _hd95(*surface_distances(pred, ref, spacing))


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface distance (surface Dice) at ``tolerance_mm`` (1.0 if both empty, 0.0 if one is)."""
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    empty = _empty_case(pred, ref)
    if empty is not None:
        return 1.0 if empty else 0.0
    return _nsd(*surface_distances(pred, ref, spacing), tolerance_mm)


def _hd95(d_pred: np.ndarray, d_ref: np.ndarray) -> float:
    return float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))


def _nsd(d_pred: np.ndarray, d_ref: np.ndarray, tolerance_mm: float) -> float:
    within = int((d_pred <= tolerance_mm).sum()) + int((d_ref <= tolerance_mm).sum())
    return within / (d_pred.size + d_ref.size)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Confusion matrix ``C[i, j]`` = number of samples of true class ``labels[i]`` predicted ``labels[j]``.

    Samples whose true or predicted value is not in ``labels`` are not counted.
    """
    t, p = _check_labels(y_true, y_pred)
    index = {int(label): i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(t, p):
        if int(a) in index and int(b) in index:
            matrix[index[int(a)], index[int(b)]] += 1
    return matrix


def per_class_f1(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] = (0, 1, 2)
) -> dict[int, float]:
    """F1 of each class (NaN for a class that is neither present nor predicted)."""
    t, p = _check_labels(y_true, y_pred)
    scores: dict[int, float] = {}
    for label in labels:
        tp = int(np.sum((t == label) & (p == label)))
        fp = int(np.sum((t != label) & (p == label)))
        fn = int(np.sum((t == label) & (p != label)))
        scores[int(label)] = float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return scores


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] = (0, 1, 2)) -> float:
    """Unweighted mean of per-class F1 (see the module docstring); NaN when there are no samples."""
    values = [v for v in per_class_f1(y_true, y_pred, labels).values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of exact matches; NaN when there are no samples."""
    t, p = _check_labels(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def segmentation_metrics(
    pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> dict[str, float]:
    """Whole-pancreas (labels 1 and 2) and lesion (label 2) DSC, NSD@``tolerance_mm`` and HD95."""
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_shapes(pred_labels, ref_labels)
    out: dict[str, float] = {}
    for region, (p, r) in {
        "whole": (pred_labels > 0, ref_labels > 0),
        "lesion": (pred_labels == 2, ref_labels == 2),
    }.items():
        out[f"{region}_dsc"] = dice(p, r)
        if _empty_case(p, r) is None:  # one distance computation for both surface metrics
            distances = surface_distances(p, r, spacing)
            out[f"{region}_nsd2"], out[f"{region}_hd95"] = _nsd(*distances, tolerance_mm), _hd95(*distances)
        else:
            out[f"{region}_nsd2"], out[f"{region}_hd95"] = (
                nsd(p, r, spacing, tolerance_mm),
                hd95(p, r, spacing),
            )
    return out


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE, border_value=0)


def _crop_to_union(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the union's bounding box plus one voxel: same boundaries, faster EDT."""
    coords = np.argwhere(p | r)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, p.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return p[box], r[box]


def _empty_case(pred: np.ndarray, ref: np.ndarray) -> bool | None:
    """True if both masks are empty, False if exactly one is, None if neither is."""
    p_any, r_any = bool(np.any(pred)), bool(np.any(ref))
    if p_any and r_any:
        return None
    return not p_any and not r_any


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from reference shape {b.shape}")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {tuple(spacing)} must be {ndim} finite positive values (mm, array order)")
    return values


def _check_labels(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} samples but y_pred has {p.size}")
    return t, p
