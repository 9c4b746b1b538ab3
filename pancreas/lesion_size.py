"""Lesion DSC and detection by true lesion volume: which lesions a model finds, and what a set of cases with
other lesion sizes would score.

Scored rows (``pancreas evaluate``, ``pancreas oof``, kept per-case tables) carry ``lesion_ml_ref``, the
reference lesion's volume. :func:`size_strata` groups them into volume bins; a lesion counts as **found** when
its DSC is at least ``FOUND_DSC``. :func:`size_adjusted` re-weights the bins' mean DSC by the share of another
set's lesions in each bin (say the masks of a whole data split), which is what the same model would score on
lesions sized like that set, if DSC depends on the case only through the lesion's size. Pure statistics:
reading masks is :func:`pancreas.evaluation.reference_volumes_ml`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: the row key of the reference lesion volume (mL) and of the predicted one
REF_KEY, PRED_KEY = "lesion_ml_ref", "lesion_ml_pred"
#: default bin edges (mL): under 1, 1-3, 3-10, 10-30, 30 and over
SIZE_EDGES_ML = (1.0, 3.0, 10.0, 30.0)
#: a lesion with at least this DSC counts as found
FOUND_DSC = 0.1


@dataclass(frozen=True)
class SizeBin:
    """The cases whose reference lesion volume lies in ``[low_ml, high_ml)``."""

    low_ml: float
    high_ml: float
    n: int
    lesion_dsc: float | None
    found: float | None
    median_ml: float | None

    @property
    def label(self) -> str:
        if self.low_ml <= 0:
            return f"< {self.high_ml:g} mL"
        return f">= {self.low_ml:g} mL" if math.isinf(self.high_ml) else f"{self.low_ml:g}-{self.high_ml:g} mL"


def check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """``edges`` as a tuple; ``ValueError`` unless they are positive, finite and increasing."""
    out = tuple(float(e) for e in edges)
    if not out or any(not math.isfinite(e) or e <= 0 for e in out) or list(out) != sorted(set(out)):
        raise ValueError(f"lesion size edges must be positive, finite and increasing mL values, got {list(edges)}")
    return out


def bin_index(volume_ml: float, edges: Sequence[float]) -> int:
    """Which of the ``len(edges) + 1`` bins holds ``volume_ml``."""
    return int(np.searchsorted(np.asarray(edges), volume_ml, side="right"))


def size_strata(rows: Sequence[Mapping[str, Any]], edges: Sequence[float] = SIZE_EDGES_ML,
                found_dsc: float = FOUND_DSC) -> list[SizeBin]:
    """Mean lesion DSC, found rate and median volume per bin of the rows that have a reference lesion
    (rows without ``lesion_ml_ref`` or with an empty reference lesion are left out)."""
    edges = check_edges(edges)
    bounds = (0.0, *edges, math.inf)
    groups: list[list[tuple[float, float]]] = [[] for _ in range(len(edges) + 1)]
    for row in rows:
        volume, dsc = row.get(REF_KEY), row.get("lesion_dsc")
        if volume is None or dsc is None or not volume > 0 or (isinstance(dsc, float) and math.isnan(dsc)):
            continue
        groups[bin_index(volume, edges)].append((float(volume), float(dsc)))
    out = []
    for i, group in enumerate(groups):
        volumes, dscs = np.array([g[0] for g in group]), np.array([g[1] for g in group])
        out.append(SizeBin(bounds[i], bounds[i + 1], len(group),
                           float(dscs.mean()) if group else None,
                           float((dscs >= found_dsc).mean()) if group else None,
                           float(np.median(volumes)) if group else None))
    return out


def population_counts(strata: Sequence[SizeBin], population_ml: Sequence[float]) -> np.ndarray:
    """How many of the lesions (volumes in mL; empty ones left out) of another set fall in each of the bins."""
    edges = [b.high_ml for b in strata[:-1]]
    return np.bincount([bin_index(v, edges) for v in population_ml if v > 0], minlength=len(strata))


def size_adjusted(strata: Sequence[SizeBin], population_ml: Sequence[float]) -> float | None:
    """The strata's mean lesion DSC re-weighted to the bin shares of ``population_ml`` (lesion volumes of
    another set); ``None`` when the population has lesions in a bin with no scored case."""
    counts = population_counts(strata, population_ml)
    if counts.sum() == 0 or any(c and b.lesion_dsc is None for c, b in zip(counts, strata, strict=True)):
        return None
    return float(sum(c * b.lesion_dsc for c, b in zip(counts, strata, strict=True) if c) / counts.sum())


def found_below(bins: Sequence[Mapping[str, Any]], limit_ml: float) -> tuple[int, int] | None:
    """``(found, n)``: how many of the lesions in recorded bins (:func:`strata_dicts` output) wholly under
    ``limit_ml`` were found; ``None`` when no such bin holds a case or the bins are malformed."""
    try:
        under = [b for b in bins if b["high_ml"] is not None and float(b["high_ml"]) <= limit_ml and int(b["n"])]
        if not under:
            return None
        return sum(round(float(b["found"]) * int(b["n"])) for b in under), sum(int(b["n"]) for b in under)
    except (KeyError, TypeError, ValueError):
        return None


def strata_dicts(strata: Sequence[SizeBin]) -> list[dict[str, Any]]:
    """JSON-ready bins (for reports)."""
    return [{**asdict(b), "high_ml": None if math.isinf(b.high_ml) else b.high_ml, "label": b.label}
            for b in strata]


def strata_markdown(strata: Sequence[SizeBin], population_ml: Sequence[float] | None = None,
                    population: str = "population", found_dsc: float = FOUND_DSC) -> str:
    """A markdown table of the bins; with ``population_ml``, that set's share per bin and the adjusted mean."""
    pop = None
    if population_ml is not None:
        counts = population_counts(strata, population_ml)
        pop = counts / max(1, counts.sum())
    head = f"| true lesion volume | cases | median mL | lesion DSC | found (DSC >= {found_dsc:g}) |"
    lines = [head + (f" share in {population} |" if pop is not None else ""),
             "| --- " * (5 + (pop is not None)) + "|"]
    for i, b in enumerate(strata):
        cells = [b.label, str(b.n), _num(b.median_ml, 1), _num(b.lesion_dsc, 3),
                 "n/a" if b.found is None else f"{b.found:.0%}"]
        if pop is not None:
            cells.append(f"{pop[i]:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    rows = [b for b in strata if b.n]
    total = sum(b.n for b in rows)
    if total:
        mean = sum(b.n * b.lesion_dsc for b in rows) / total
        lines.append(f"| all | {total} | | {mean:.3f} | {sum(b.n * b.found for b in rows) / total:.0%} |"
                     + (" 100% |" if pop is not None else ""))
    if population_ml is not None:
        adjusted = size_adjusted(strata, population_ml)
        lines += ["", f"Lesion DSC re-weighted to the lesion sizes of {population} "
                      f"({int(sum(1 for v in population_ml if v > 0))} lesions): "
                      + ("n/a (a bin with lesions there has no scored case)" if adjusted is None
                         else f"{adjusted:.3f}")]
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
