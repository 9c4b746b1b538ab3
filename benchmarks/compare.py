"""Side-by-side comparison with nnU-Net v2's own predictor: same weights, same volumes, same run.

:func:`compare` runs every candidate (:mod:`benchmarks.candidates`) in its own worker process
(:mod:`benchmarks.worker`), alternating between candidates case by case (round-robin, and the order rotates
with each repeat), measures file → mask-file wall time, stage times, peak RSS and GPU memory, scores the
masks (DSC of pancreas ∪ lesion and of the lesion against ground truth, and against the baseline's mask),
takes medians over repeats and writes JSON, markdown and a PNG chart (:mod:`benchmarks.report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.candidates import BASELINE, Candidate, discover
from pancreas.errors import DatasetError, PancreasError

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = "_0000.nii.gz"
#: a candidate's whole-pancreas DSC must stay within this of the baseline's to be called "best"
DSC_TOLERANCE = 0.01


@dataclass(frozen=True)
class Case:
    case_id: str
    image: str
    mask: str | None
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CompareConfig:
    """Options of :func:`compare`."""

    bundles: tuple[str, ...]
    cases: str
    out: str
    repeats: int = 3
    baseline_repeats: int | None = None  # nnU-Net candidates (slow); None: same as repeats
    candidates: tuple[str, ...] = ()  # glob patterns; empty: all runnable
    name: str = "compare"  # file stem of the results
    max_cases: int | None = None
    masks: str | None = None  # keep predicted masks here (<masks>/<candidate>/<case>.nii.gz); None: temporary
    timeout_s: float = 1800.0
    command: str = ""


def find_cases(folder: str | Path, *, max_cases: int | None = None) -> list[Case]:
    """Images ``*_0000.nii.gz`` under ``folder`` (quiz split with ``subtype*/`` or flat), masks beside them."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"--cases {folder} is not a folder; pass a quiz split (e.g. phantoms/validation) "
                           "or a folder of *_0000.nii.gz images")
    images = sorted(folder.rglob(f"*{IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(f"no *{IMAGE_SUFFIX} images under {folder}")
    cases = []
    for img in images[:max_cases]:
        case_id = img.name[: -len(IMAGE_SUFFIX)]
        mask = img.with_name(case_id + ".nii.gz")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(img))
        reader.ReadImageInformation()
        shape = tuple(int(s) for s in reversed(reader.GetSize()))
        cases.append(Case(case_id, str(img), str(mask) if mask.is_file() else None, shape))
    return cases


def _schedule(candidates: list[Candidate], cases: list[Case], repeats: int) -> list[tuple[int, Case, Candidate]]:
    """Round-robin: per repeat and case, every candidate once; the candidate order rotates per repeat."""
    plan = []
    for r in range(repeats):
        k = r % len(candidates)
        order = candidates[k:] + candidates[:k]
        for case in cases:
            plan += [(r, case, c) for c in order if r < (c.repeats or repeats)]
    return plan


def _read_labels(path: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.uint8)


def _dsc(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    from pancreas.metrics import dice

    if pred.shape != ref.shape:
        raise PancreasError(f"mask shape {pred.shape} differs from reference shape {ref.shape}")
    return {"whole": dice(pred > 0, ref > 0), "lesion": dice(pred == 2, ref == 2)}


def _run_all(cfg: CompareConfig, candidates: list[Candidate], cases: list[Case],
             masks: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start workers, run the schedule, stop workers. Returns (setup per candidate, raw runs)."""
    from benchmarks.worker import Worker

    warm = min(cases, key=lambda c: int(np.prod(c.shape))).image
    workers: dict[str, Worker] = {}
    setup: dict[str, Any] = {}
    try:
        for c in tqdm(candidates, desc="starting candidates"):
            workers[c.name] = Worker(dataclasses.asdict(c), warm, timeout_s=cfg.timeout_s)
            setup[c.name] = workers[c.name].ready()
            if not setup[c.name]["ok"]:
                logger.warning("candidate %s failed to start: %s", c.name, setup[c.name]["error"])
                workers.pop(c.name).close()
        live = [c for c in candidates if c.name in workers]
        runs = []
        journal = Path(cfg.out) / f"{cfg.name}.runs.jsonl"  # raw runs as they finish (survives a crash)
        journal.write_text("")
        for r, case, c in tqdm(_schedule(live, cases, cfg.repeats), desc="runs"):
            mask_out = masks / c.name / f"{case.case_id}.nii.gz"
            try:
                res = workers[c.name].run(case.image, str(mask_out))
            except KeyboardInterrupt:  # Ctrl-C: stop, but still report what has finished
                logger.warning("interrupted: reporting the %d runs that finished", len(runs))
                setup["_interrupted"] = {"ok": False, "error": f"interrupted after {len(runs)} runs"}
                break
            runs.append({"candidate": c.name, "case": case.case_id, "repeat": r, "mask": str(mask_out), **res})
            with open(journal, "a") as f:
                f.write(json.dumps(runs[-1], default=str) + "\n")
            if not res["ok"]:
                logger.warning("%s on %s failed: %s", c.name, case.case_id, res["error"])
    finally:
        for w in workers.values():
            w.close()
    return setup, runs


def _median_stages(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r["stages_ms"]})
    return {k: statistics.median([r["stages_ms"][k] for r in runs if k in r["stages_ms"]]) for k in keys}


def _aggregate(candidates: list[Candidate], cases: list[Case], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (candidate, case): medians over repeats, maxima of memory, DSCs of the last mask."""
    rows = []
    baseline_masks = {r["case"]: r["mask"] for r in runs if r["candidate"] == BASELINE and r["ok"]}
    for c in candidates:
        for case in cases:
            ok = [r for r in runs if r["candidate"] == c.name and r["case"] == case.case_id and r["ok"]]
            if not ok:
                continue
            pred = _read_labels(ok[-1]["mask"])
            gpu = [r["gpu_peak_mb"] for r in ok if r["gpu_peak_mb"] is not None]
            row = {"candidate": c.name, "case": case.case_id, "shape": list(case.shape), "repeats": len(ok),
                   "total_ms": statistics.median(r["total_ms"] for r in ok), "totals_ms": [r["total_ms"] for r in ok],
                   "stages_ms": _median_stages(ok), "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
                   "gpu_peak_mb": max(gpu) if gpu else None, "rss_method": ok[-1]["rss_method"],
                   "dsc": _dsc(pred, _read_labels(case.mask)) if case.mask else None,
                   "agreement": (_dsc(pred, _read_labels(baseline_masks[case.case_id]))
                                 if case.case_id in baseline_masks else None)}
            rows.append(row)
    return rows


def _summarize(candidates: list[Candidate], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: total of per-case medians, speed-up vs the baseline, mean DSCs."""
    base = {r["case"]: r for r in rows if r["candidate"] == BASELINE}
    out = []
    for c in candidates:
        mine = [r for r in rows if r["candidate"] == c.name]
        if not mine:
            continue
        common = [r for r in mine if r["case"] in base]
        speedups = [base[r["case"]]["total_ms"] / r["total_ms"] for r in common]
        dsc = [r["dsc"]["whole"] for r in mine if r["dsc"]]
        les = [r["dsc"]["lesion"] for r in mine if r["dsc"]]
        agree = [r["agreement"]["whole"] for r in mine if r["agreement"]]
        out.append({"candidate": c.name, "runner": c.runner, "bundle": c.bundle, "options": c.options,
                    "cases": len(mine), "total_ms": sum(r["total_ms"] for r in mine),
                    "speedup": (sum(base[r["case"]]["total_ms"] for r in common) / sum(r["total_ms"] for r in common)
                                if common else None),
                    "min_case_speedup": min(speedups) if speedups else None,
                    "dsc_whole": statistics.fmean(dsc) if dsc else None,
                    "dsc_lesion": statistics.fmean(les) if les else None,
                    "agreement_whole": statistics.fmean(agree) if agree else None,
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                    "gpu_peak_mb": max((r["gpu_peak_mb"] for r in mine if r["gpu_peak_mb"]), default=None)})
    return out


def best_line(summary: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The fastest non-baseline candidate whose whole DSC is within :data:`DSC_TOLERANCE` of the baseline's."""
    base = next((s for s in summary if s["candidate"] == BASELINE), None)
    if base is None:
        return None, "best: n/a (the nnU-Net v2 default baseline did not run)"
    others = [s for s in summary if s["candidate"] != BASELINE and s["speedup"]]

    def delta(s: dict[str, Any]) -> float | None:
        if s["dsc_whole"] is None or base["dsc_whole"] is None:
            return None
        return float(s["dsc_whole"] - base["dsc_whole"])

    within = [s for s in others if delta(s) is None or abs(delta(s)) <= DSC_TOLERANCE]  # type: ignore[arg-type]
    pool = within or others
    if not pool:
        return None, "best: n/a (no candidate finished)"
    best = max(pool, key=lambda s: s["speedup"])
    d = delta(best)
    change = "n/a, no ground truth" if d is None else f"{d:+.3f}"
    note = "" if within else f" — no candidate within {DSC_TOLERANCE} DSC of the baseline"
    return best, (f"best: {best['candidate']} is {best['speedup']:.1f}× faster end to end than nnU-Net v2 default "
                  f"(DSC change {change}){note}")


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Run the comparison and write ``<out>/<name>.json|.md|.png``; return the result dict."""
    from benchmarks.machine import machine_info
    from benchmarks.report import write_reports

    if cfg.repeats < 1 or (cfg.baseline_repeats is not None and cfg.baseline_repeats < 1):
        raise PancreasError(f"--repeats {cfg.repeats} / --baseline-repeats {cfg.baseline_repeats} must be >= 1")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = find_cases(cfg.cases, max_cases=cfg.max_cases)
    candidates = discover([Path(b) for b in cfg.bundles], patterns=list(cfg.candidates) or None,
                          baseline_repeats=cfg.baseline_repeats)
    logger.info("candidates: %s; cases: %s", [c.name for c in candidates], [c.case_id for c in cases])
    with tempfile.TemporaryDirectory(prefix="bench-masks-") as tmp:
        masks = Path(cfg.masks) if cfg.masks else Path(tmp)
        setup, runs = _run_all(cfg, candidates, cases, masks)
        rows = _aggregate(candidates, cases, runs)
    summary = _summarize(candidates, rows)
    best, line = best_line(summary)
    result = {"config": dataclasses.asdict(cfg), "machine": machine_info(),
              "cases": [dataclasses.asdict(c) for c in cases], "setup": setup,
              "failures": [r for r in runs if not r["ok"]], "rows": rows, "summary": summary,
              "best": best["candidate"] if best else None, "best_line": line}
    result["files"] = write_reports(result, out, cfg.name)
    return result
