"""Score a folder of predicted masks (and subtypes) against ground truth: ``pancreas evaluate``.

``gt_dir`` is either a quiz split folder (``subtype{k}/quiz_{k}_{NNN}.nii.gz`` masks, subtypes taken
from the folder names; images ``*_0000.nii.gz`` next to them are ignored) or a flat folder of masks
(e.g. ``test_labels/``, whose ``subtype_results.csv`` is used when no ``gt_subtypes`` is given).
``pred_dir`` is a flat folder of masks named like the reference masks; a trailing ``_0000`` is
stripped. Masks are scored on the reference's voxel grid (distances do not depend on the direction
matrix), in mm from the header spacing. A prediction that covers the same voxels in another axis
order (e.g. on the canonical grid ``pancreas convert`` writes) is compared after canonicalizing both
through :mod:`pancreas.nifti`; any other grid difference is an error. Metric definitions and the
empty-mask conventions are in :mod:`pancreas.metrics`. Importable without torch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from pancreas import LABELS, SUBTYPES
from pancreas.errors import DatasetError
from pancreas.lesion_size import PRED_KEY, REF_KEY, size_strata, strata_dicts, strata_markdown
from pancreas.metrics import CONVENTIONS, accuracy, confusion, macro_f1, per_class_f1, segmentation_metrics
from pancreas.nifti import canonicalize, read_image
from pancreas.quiz import NII, SUBTYPE_CSV, TRAIN_SPLITS, case_id_of, is_image, read_subtype_csv, subtype_dirs
from pancreas.sources import source_of

logger = logging.getLogger(__name__)

SEGMENTATION_KEYS = ("whole_dsc", "lesion_dsc", "whole_nsd2", "lesion_nsd2", "whole_hd95", "lesion_hd95")
#: Geometry tolerances: spacing (relative), origin (mm), direction (absolute).
SPACING_RTOL, ORIGIN_ATOL, DIRECTION_ATOL = 1e-4, 1e-3, 1e-4


def label_array(array: np.ndarray, name: str) -> np.ndarray:
    """Round a stored mask (real quiz masks hold 1.0000153) to uint8 labels, checking they are 0/1/2."""
    array = np.asarray(array)
    rounded = np.rint(array) if array.dtype.kind == "f" else array  # float masks stay float32 here
    if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or np.abs(array - rounded).max() > 1e-3):
        raise DatasetError(
            f"{name}: mask values are not integers (e.g. probabilities); save a label map "
            f"with values {sorted(LABELS.values())}",
            code="bad_labels",
        )
    outside = (rounded < 0) | (rounded > max(LABELS.values()))
    if outside.any():
        bad = np.unique(rounded[outside]).tolist()
        raise DatasetError(
            f"{name}: label values {[int(v) for v in bad[:10]]} are outside "
            f"{sorted(LABELS.values())} (background, pancreas, lesion); relabel the mask",
            code="bad_labels",
        )
    return rounded.astype(np.uint8)


def grid_mismatch(a: sitk.Image, b: sitk.Image) -> str | None:
    """Describe the first header field in which two images differ (``None`` if they share a grid)."""
    checks = (
        ("size", a.GetSize(), b.GetSize(), lambda x, y: x == y),
        (
            "spacing",
            a.GetSpacing(),
            b.GetSpacing(),
            lambda x, y: np.allclose(x, y, rtol=SPACING_RTOL, atol=0),
        ),
        ("origin", a.GetOrigin(), b.GetOrigin(), lambda x, y: np.allclose(x, y, rtol=0, atol=ORIGIN_ATOL)),
        (
            "direction",
            a.GetDirection(),
            b.GetDirection(),
            lambda x, y: np.allclose(x, y, rtol=0, atol=DIRECTION_ATOL),
        ),
    )
    for field_name, x, y, same in checks:
        if not same(x, y):
            fmt = [tuple(round(float(v), 4) for v in t) for t in (x, y)]
            return f"{field_name} {fmt[0]} vs {fmt[1]}"
    return None


def discover_reference(gt_dir: str | Path) -> tuple[dict[str, Path], dict[str, int]]:
    """Reference masks ``{case_id: path}`` and subtypes (from ``subtype{k}`` folders or the CSV)."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(f"reference folder {gt_dir} does not exist", code="missing_file")
    if any((gt_dir / split).is_dir() for split in TRAIN_SPLITS):
        raise DatasetError(
            f"{gt_dir} is a quiz root; pass one split folder, e.g. {gt_dir / 'validation'}", code="bad_layout"
        )
    sub_dirs = subtype_dirs(gt_dir)
    masks: dict[str, Path] = {}
    subtypes: dict[str, int] = {}
    for subtype, folder in sub_dirs or [(None, gt_dir)]:
        for path in sorted(folder.glob(f"*{NII}")):
            if is_image(path.name):
                continue
            case = case_id_of(path.name)
            if case in masks:
                raise DatasetError(
                    f"case {case} appears twice: {masks[case]} and {path}", code="duplicate_case"
                )
            masks[case] = path
            if subtype is not None:
                subtypes[case] = subtype
    if not masks:
        raise DatasetError(
            f"no reference masks (*{NII}, not *_0000{NII}) found in {gt_dir}", code="empty_dataset"
        )
    if not sub_dirs and (gt_dir / SUBTYPE_CSV).is_file():
        subtypes = read_subtype_csv(gt_dir / SUBTYPE_CSV)
    return masks, subtypes


def discover_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """Predicted masks ``{case_id: path}`` in a flat folder (a ``_0000`` suffix is stripped)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"prediction folder {pred_dir} does not exist", code="missing_file")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.glob(f"*{NII}")):
        case = case_id_of(path.name)
        if case in found:
            raise DatasetError(
                f"two predictions for case {case}: {found[case].name} and {path.name}; keep one",
                code="duplicate_case",
            )
        found[case] = path
    if not found:
        raise DatasetError(
            f"no predicted masks (*{NII}) found directly in {pred_dir}; predictions must be a flat "
            "folder of CASE.nii.gz files",
            code="empty_dataset",
        )
    return found


def _read_mask(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = read_image(path)
    return image, label_array(sitk.GetArrayViewFromImage(image), path.name)


def _canonical(image: sitk.Image, labels: np.ndarray) -> tuple[sitk.Image, np.ndarray, tuple[float, ...]]:
    """Labels in canonical orientation, an image carrying that grid, and its (z, y, x) spacing."""
    volume = canonicalize(image)
    canonical = np.ascontiguousarray(volume.orientation.to_canonical(labels))
    return volume.canonical_image(canonical, dtype=np.uint8), canonical, volume.spacing


def _align(
    pred_image: sitk.Image, pred: np.ndarray, gt_image: sitk.Image, gt: np.ndarray, names: tuple[Path, Path]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Put prediction and reference on one voxel grid: as stored, or both canonicalized when they cover the
    same voxels in a different axis order (e.g. a prediction on the ``pancreas convert`` canonical grid)."""
    problem = grid_mismatch(pred_image, gt_image)
    if problem is None:
        return pred, gt, tuple(float(s) for s in reversed(gt_image.GetSpacing()))  # numpy (z, y, x) order
    pred_c, pred, _ = _canonical(pred_image, pred)
    gt_c, gt, spacing = _canonical(gt_image, gt)
    if grid_mismatch(pred_c, gt_c) is not None:
        raise DatasetError(
            f"prediction {names[0]} and reference {names[1]} are on different grids "
            f"({problem}); write predictions on the reference image's grid",
            code="grid_mismatch",
        )
    logger.debug("%s: compared in canonical orientation (%s)", names[0].name, problem)
    return pred, gt, spacing


def score_case(pred_path: Path | None, gt_path: Path, tolerance_mm: float = 2.0) -> dict[str, Any]:
    """Segmentation metrics of one case; a missing prediction is scored as an empty mask."""
    gt_image, gt = _read_mask(gt_path)
    if pred_path is None:
        pred, spacing = np.zeros_like(gt), tuple(float(s) for s in reversed(gt_image.GetSpacing()))
    else:
        pred_image, pred = _read_mask(pred_path)
        pred, gt, spacing = _align(pred_image, pred, gt_image, gt, (pred_path, gt_path))
    row: dict[str, Any] = {"case_id": case_id_of(gt_path.name), "prediction_missing": pred_path is None}
    row.update(segmentation_metrics(pred, gt, spacing, tolerance_mm))
    row[REF_KEY], row[PRED_KEY] = lesion_ml(gt, spacing), lesion_ml(pred, spacing)
    return row


def lesion_ml(labels: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Volume (mL) of label 2 in ``labels`` with voxel size ``spacing`` (mm, any axis order)."""
    return float(np.count_nonzero(labels == LABELS["lesion"]) * np.prod(spacing) / 1000.0)


def reference_volumes_ml(gt_dir: str | Path) -> dict[str, float]:
    """Lesion volume (mL) of every reference mask in ``gt_dir`` (the layouts :func:`discover_reference` reads)."""
    references, _ = discover_reference(gt_dir)
    out = {}
    for case, path in tqdm(sorted(references.items()), desc="lesion volumes", unit="mask", disable=None):
        image, labels = _read_mask(path)
        out[case] = lesion_ml(labels, tuple(image.GetSpacing()))
    return out


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def jsonable(value: Any) -> Any:
    """JSON-safe copy: NaN -> None, numpy scalars/arrays -> Python values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class EvaluationReport:
    """Summary and per-case results of :func:`evaluate_folders`."""

    summary: dict[str, Any]
    per_case: list[dict[str, Any]]
    conventions: dict[str, str] = field(default_factory=lambda: dict(CONVENTIONS))

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"summary": self.summary, "per_case": self.per_case, "conventions": self.conventions})

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON (NaN written as ``null``); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def write_per_case_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = ["case_id", *SEGMENTATION_KEYS, REF_KEY, PRED_KEY, "prediction_missing", "gt_subtype",
                   "pred_subtype"]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in self.per_case:
                writer.writerow(
                    {
                        k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                        for k, v in row.items()
                    }
                )
        return path

    def table(self) -> str:
        """A plain-text summary table."""
        s = self.summary
        data = s.get("data") or {}
        lines = [
            f"data: {data.get('source', 'unnamed')} ({data.get('reference', '?')})",
            f"cases: {s['n_cases']}  missing predictions: {len(s['missing_predictions'])}",
            f"{'metric':<14}{'mean':>10}{'std':>10}",
        ]
        for key in SEGMENTATION_KEYS:
            mean, std = s[key], s["std"][key]
            lines.append(f"{key:<14}{_fmt(mean):>10}{_fmt(std):>10}")
        lines.append(
            f"hd95 undefined (one mask empty): whole {s['whole_hd95_undefined']}, "
            f"lesion {s['lesion_hd95_undefined']}"
        )
        sub = s.get("subtype")
        if sub:
            lines.append(
                f"subtype macro-F1 {_fmt(sub['macro_f1'])}  accuracy {_fmt(sub['accuracy'])}  "
                f"(n={sub['n_cases']}, missing {len(sub['missing'])})"
            )
            lines.append("confusion (rows true 0/1/2, cols predicted): " + str(sub["confusion"]))
        strata = size_strata(self.per_case)
        if any(b.n for b in strata):
            lines += ["lesion DSC by true lesion volume:", strata_markdown(strata)]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _subtype_block(
    rows: list[dict[str, Any]], gt: Mapping[str, int], pred: Mapping[str, int]
) -> dict[str, Any]:
    cases = sorted(c for c in (r["case_id"] for r in rows) if c in gt)
    y_true = [gt[c] for c in cases]
    y_pred = [pred.get(c, -1) for c in cases]  # -1: no prediction, counted as a miss
    return {
        "macro_f1": macro_f1(y_true, y_pred, SUBTYPES),
        "accuracy": accuracy(y_true, y_pred),
        "per_class_f1": per_class_f1(y_true, y_pred, SUBTYPES),
        "labels": list(SUBTYPES),
        "confusion": confusion(y_true, y_pred, SUBTYPES).tolist(),
        "n_cases": len(cases),
        "missing": [c for c in cases if c not in pred],
    }


def summarize_rows(rows: list[dict[str, Any]], missing: list[str], extra: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"n_cases": len(rows)}
    summary.update({k: _mean([r[k] for r in rows]) for k in SEGMENTATION_KEYS})
    summary["std"] = {
        k: (
            float(np.std([r[k] for r in rows if not math.isnan(r[k])]))
            if any(not math.isnan(r[k]) for r in rows)
            else None
        )
        for k in SEGMENTATION_KEYS
    }
    for region in ("whole", "lesion"):
        summary[f"{region}_hd95_undefined"] = sum(math.isnan(r[f"{region}_hd95"]) for r in rows)
    summary["missing_predictions"], summary["extra_predictions"] = missing, extra
    summary["lesion_size"] = strata_dicts(size_strata(rows))
    return summary


def _as_subtypes(value: str | Path | Mapping[str, int] | None) -> dict[str, int] | None:
    if value is None or isinstance(value, Mapping):
        return None if value is None else {case_id_of(k): int(v) for k, v in value.items()}
    return read_subtype_csv(value)


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    pred_subtypes: str | Path | Mapping[str, int] | None = None,
    gt_subtypes: str | Path | Mapping[str, int] | None = None,
    tolerance_mm: float = 2.0,
    num_workers: int = 2,
) -> EvaluationReport:
    """Score every reference case (see the module docstring); subtypes are scored when predicted.

    Raises:
        DatasetError: missing folders, bad labels, grids that differ, subtype predictions without truth.
    """
    references, folder_subtypes = discover_reference(gt_dir)
    predictions = discover_predictions(pred_dir)
    truth = _as_subtypes(gt_subtypes) or folder_subtypes
    predicted = _as_subtypes(pred_subtypes)
    if predicted is not None and not truth:
        raise DatasetError(
            "subtype predictions were given but no reference subtypes: pass --gt-subtypes "
            "or a quiz split folder (subtype{k}/ sub-folders)",
            code="missing_subtypes",
        )
    missing = sorted(set(references) - set(predictions))
    extra = sorted(set(predictions) - set(references))
    if missing:
        logger.warning(
            "%d reference case(s) have no prediction (scored as empty): %s", len(missing), missing[:10]
        )
    if extra:
        logger.warning("%d prediction(s) have no reference and are ignored: %s", len(extra), extra[:10])
    cases = sorted(references)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        jobs = pool.map(lambda c: score_case(predictions.get(c), references[c], tolerance_mm), cases)
        rows = list(tqdm(jobs, total=len(cases), desc="evaluate", unit="case", disable=None))
    for row in rows:
        row["gt_subtype"] = truth.get(row["case_id"])
        row["pred_subtype"] = None if predicted is None else predicted.get(row["case_id"])
    summary = summarize_rows(rows, missing, extra)
    summary["data"] = {"source": source_of(gt_dir), "reference": str(gt_dir)}
    summary["subtype"] = None if predicted is None else _subtype_block(rows, truth, predicted)
    return EvaluationReport(summary=summary, per_case=rows)
