"""Parity between a reference runner (torch fp32) and a candidate (ONNX, fp16, INT8, TensorRT, compiled).

:func:`check_parity` measures; :func:`parity_gate` raises one :class:`ParityError` that lists *every*
failed check (shape, non-finite values, voxel argmax agreement, class-logit tolerance, class argmax), so a
user sees all that is wrong at once. Tolerances are stated per precision in :data:`TOLERANCES`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from optimize.runners import Runner
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)


class ParityError(PancreasError):
    """An optimized artifact does not reproduce its reference within the stated tolerance."""

    code = "parity_failed"


@dataclass(frozen=True)
class ParityTolerance:
    """Gate thresholds.

    Args:
        min_agreement: minimum fraction of voxels whose argmax label equals the reference's.
        cls_atol: maximum absolute difference of any class logit.
        cls_argmax: require the same predicted subtype for every patch.
    """

    min_agreement: float = 0.999
    cls_atol: float = 1e-3
    cls_argmax: bool = True


#: Stated tolerances by the candidate's precision (fp32 export is the strict gate of the issue).
TOLERANCES: dict[str, ParityTolerance] = {
    "fp32": ParityTolerance(min_agreement=0.999, cls_atol=1e-3),
    "fp16": ParityTolerance(min_agreement=0.995, cls_atol=5e-2, cls_argmax=False),
    # bfloat16 keeps 8 mantissa bits against float16's 11: looser than fp16, far tighter than int8
    "bf16": ParityTolerance(min_agreement=0.98, cls_atol=1e-1, cls_argmax=False),
    "int8": ParityTolerance(min_agreement=0.95, cls_atol=1.0, cls_argmax=False),
}


@dataclass
class ParityReport:
    """Measured parity plus the failures against ``tolerance`` (empty when it passes)."""

    n_patches: int
    agreement: float
    cls_max_abs_diff: float
    seg_max_abs_diff: float
    cls_argmax_agreement: float
    tolerance: ParityTolerance
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def check_parity(reference: Runner, candidate: Runner, patches: np.ndarray,
                 tolerance: ParityTolerance = TOLERANCES["fp32"]) -> ParityReport:
    """Run both runners on ``patches`` and collect every violated check into the report."""
    ref_seg, ref_cls = reference(patches)
    seg, cls = candidate(patches)
    failures: list[str] = []
    for name, a, b in (("seg_logits", ref_seg, seg), ("cls_logits", ref_cls, cls)):
        if a.shape != b.shape:
            failures.append(f"{name} shape {tuple(b.shape)} != reference {tuple(a.shape)}")
        if not np.all(np.isfinite(b)):
            failures.append(f"{name} has {int(np.size(b) - np.isfinite(b).sum())} non-finite values")
    if failures:
        return ParityReport(len(patches), 0.0, float("inf"), float("inf"), 0.0, tolerance, failures)
    agreement = float(np.mean(ref_seg.argmax(1) == seg.argmax(1)))
    cls_diff = float(np.max(np.abs(ref_cls - cls))) if cls.size else 0.0
    seg_diff = float(np.max(np.abs(ref_seg - seg)))
    cls_agree = float(np.mean(ref_cls.argmax(1) == cls.argmax(1)))
    if agreement < tolerance.min_agreement:
        failures.append(f"voxel argmax agreement {agreement:.5f} < {tolerance.min_agreement}")
    if cls_diff > tolerance.cls_atol:
        failures.append(f"class logits differ by up to {cls_diff:.3g} > atol {tolerance.cls_atol}")
    if tolerance.cls_argmax and cls_agree < 1.0:
        failures.append(f"predicted subtype differs on {1 - cls_agree:.1%} of patches")
    return ParityReport(len(patches), agreement, cls_diff, seg_diff, cls_agree, tolerance, failures)


def parity_gate(reference: Runner, candidate: Runner, patches: np.ndarray, *, what: str,
                tolerance: ParityTolerance = TOLERANCES["fp32"]) -> ParityReport:
    """:func:`check_parity`, raising :class:`ParityError` listing all failures for ``what`` (an artifact)."""
    report = check_parity(reference, candidate, patches, tolerance)
    if not report.passed:
        lines = "\n  - ".join(report.failures)
        raise ParityError(f"parity gate failed for {what} on {report.n_patches} patches "
                          f"({len(report.failures)} failures):\n  - {lines}\n"
                          "fix: re-export, or loosen the stated tolerance only if the precision warrants it")
    logger.info("parity ok for %s: agreement %.5f, cls max diff %.2g", what, report.agreement,
                report.cls_max_abs_diff)
    return report


def patch_accuracy(runner: Runner, images: np.ndarray, labels: np.ndarray, subtypes: np.ndarray,
                   *, batch: int = 2) -> dict[str, float]:
    """Pooled whole-pancreas / lesion DSC and subtype accuracy of ``runner`` on labelled patches.

    A cheap, patch-level accuracy signal recorded by every optimize stage; the per-case numbers of
    ``benchmarks/results/optimize.md`` come from the full engine (:mod:`benchmarks.optimize_report`).
    """
    inter = {"whole": 0.0, "lesion": 0.0}
    total = {"whole": 0.0, "lesion": 0.0}
    correct = 0
    for i in range(0, len(images), batch):
        seg, cls = runner(images[i:i + batch])
        pred, ref = seg.argmax(1), labels[i:i + batch]
        for region, (p, r) in {"whole": (pred > 0, ref > 0), "lesion": (pred == 2, ref == 2)}.items():
            inter[region] += float(np.logical_and(p, r).sum())
            total[region] += float(p.sum() + r.sum())
        correct += int((cls.argmax(1) == subtypes[i:i + batch]).sum())
    out = {f"{k}_dsc": (2 * inter[k] / total[k] if total[k] else 1.0) for k in inter}
    out["subtype_acc"] = correct / max(1, len(images))
    return {k: round(v, 5) for k, v in out.items()}
