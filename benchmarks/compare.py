"""Side-by-side comparison with nnU-Net v2's own predictor: same weights, same volumes, same run.

:func:`compare` runs every candidate (:mod:`benchmarks.candidates`) in its own worker process
(:mod:`benchmarks.candidate_worker`), alternating between candidates case by case (round-robin, and the order rotates
with each repeat), measures file → mask-file wall time, stage times, peak RSS and GPU memory, scores the
masks (DSC of pancreas ∪ lesion and of the lesion against ground truth, and against the baseline's mask),
takes medians over repeats and writes JSON, markdown and a PNG chart (:mod:`benchmarks.report`).

Results are written as they come: every finished run is appended to ``<name>.runs.jsonl`` and the JSON and
markdown are rewritten after it, so a run that is stopped still leaves complete reports of what finished.
With ``CompareConfig.deadline`` no run starts that is not expected to finish in time, and the run in flight
is dropped at the deadline; SIGTERM (e.g. from ``timeout``) is handled like Ctrl-C: report, then stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.candidates import BASELINE, NO_TTA, Candidate, discover
from pancreas.errors import DatasetError, PancreasError
from pancreas.quiz import CHANNEL, NII, case_id_of, mask_name

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = CHANNEL + NII
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
    #: wall-clock time (``time.time()``) by which the last run must have finished; None: no limit
    deadline: float | None = None


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
        case_id = case_id_of(img.name)
        mask = img.with_name(mask_name(case_id))
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


class _Scores:
    """DSC against ground truth and agreement with the baseline's mask, once per (candidate, case).

    A candidate's first successful mask is scored (repeats write the same mask); ground truth and baseline
    masks are read once per case.
    """

    def __init__(self, cases: list[Case]) -> None:
        self._cases = {c.case_id: c for c in cases}
        self._refs: dict[tuple[str, str], np.ndarray] = {}
        self._masks: dict[tuple[str, str], str] = {}
        self.scores: dict[tuple[str, str], dict[str, Any]] = {}

    def _ref(self, kind: str, case_id: str) -> np.ndarray | None:
        path = self._cases[case_id].mask if kind == "gt" else self._masks.get((BASELINE, case_id))
        if path is None:
            return None
        if (kind, case_id) not in self._refs:
            self._refs[(kind, case_id)] = _read_labels(path)
        return self._refs[(kind, case_id)]

    def add(self, run: dict[str, Any]) -> None:
        key = (run["candidate"], run["case"])
        if not run["ok"] or key in self.scores:
            return
        self._masks[key] = run["mask"]
        pred = _read_labels(run["mask"])
        gt, base = self._ref("gt", run["case"]), self._ref("baseline", run["case"])
        self.scores[key] = {"dsc": _dsc(pred, gt) if gt is not None else None,
                            "agreement": _dsc(pred, base) if base is not None else None}
        if run["candidate"] == BASELINE:  # candidates that finished this case before the baseline did
            for (name, case_id), score in self.scores.items():
                if case_id == run["case"] and score["agreement"] is None:
                    score["agreement"] = _dsc(_read_labels(self._masks[(name, case_id)]), base)


def _estimate_ms(runs: list[dict[str, Any]], candidate: str, case: Case, cases: dict[str, Case]) -> float | None:
    """Expected wall time of ``candidate`` on ``case``: its median there, else scaled by voxel count."""
    mine = [r for r in runs if r["candidate"] == candidate and r["ok"]]
    same = [r["total_ms"] for r in mine if r["case"] == case.case_id]
    if same:
        return statistics.median(same)
    if not mine:
        return None
    ref = max(mine, key=lambda r: np.prod(cases[r["case"]].shape))
    return float(ref["total_ms"] * np.prod(case.shape) / np.prod(cases[ref["case"]].shape))


@dataclass
class _Progress:
    """What has happened so far: setup per candidate, runs, runs left out, scores."""

    setup: dict[str, Any]
    runs: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    scores: _Scores


def _remaining(cfg: CompareConfig) -> float:
    return float("inf") if cfg.deadline is None else cfg.deadline - time.time()


def _start_workers(cfg: CompareConfig, candidates: list[Candidate], warm: str, progress: _Progress,
                   workers: dict[str, Any]) -> None:
    """Start every candidate's process at once (loading and compiling overlap), then wait for each."""
    from benchmarks.candidate_worker import Worker

    for c in candidates:
        workers[c.name] = Worker(dataclasses.asdict(c), warm, timeout_s=cfg.timeout_s)
    for c in tqdm(candidates, desc="starting candidates", disable=None):
        workers[c.name].timeout_s = max(1.0, min(cfg.timeout_s, _remaining(cfg)))
        progress.setup[c.name] = workers[c.name].ready()
        if not progress.setup[c.name]["ok"]:
            logger.warning("candidate %s failed to start: %s", c.name, progress.setup[c.name]["error"])
            workers.pop(c.name).close()


def _run_one(cfg: CompareConfig, worker: Any, r: int, case: Case, c: Candidate, masks: Path,
             progress: _Progress, cases: dict[str, Case]) -> dict[str, Any] | None:
    """One scheduled run, unless it cannot finish before the deadline (then it is recorded as skipped)."""
    left = _remaining(cfg)
    est = _estimate_ms(progress.runs, c.name, case, cases)
    if left <= 0 or (est is not None and est / 1e3 > left):
        reason = f"time budget: {max(left, 0):.0f} s left" + (f", about {est / 1e3:.0f} s needed" if est else "")
        progress.skipped.append({"candidate": c.name, "case": case.case_id, "repeat": r, "reason": reason})
        return None
    worker.timeout_s = max(1.0, min(cfg.timeout_s, left))
    mask_out = masks / c.name / f"{case.case_id}.nii.gz"
    res = worker.run(case.image, str(mask_out))
    if not res["ok"] and left < cfg.timeout_s and "no answer within" in str(res.get("error")):
        res["error"] = f"stopped at the time budget ({res['error']})"
    return {"candidate": c.name, "case": case.case_id, "repeat": r, "mask": str(mask_out), **res}


def _run_all(cfg: CompareConfig, candidates: list[Candidate], cases: list[Case], masks: Path,
             progress: _Progress, on_run: Callable[[], None]) -> None:
    """Start workers, run the schedule (``on_run`` after each run), stop workers; Ctrl-C/SIGTERM stop early."""
    warm = min(cases, key=lambda c: int(np.prod(c.shape))).image
    by_id = {c.case_id: c for c in cases}
    workers: dict[str, Any] = {}
    journal = Path(cfg.out) / f"{cfg.name}.runs.jsonl"  # raw runs as they finish (survives a crash)
    journal.write_text("")
    try:
        _start_workers(cfg, candidates, warm, progress, workers)
        live = [c for c in candidates if c.name in workers]
        for r, case, c in tqdm(_schedule(live, cases, cfg.repeats), desc="runs", disable=None):
            if c.name not in workers:
                continue
            run = _run_one(cfg, workers[c.name], r, case, c, masks, progress, by_id)
            if run is None:
                continue
            progress.runs.append(run)
            with open(journal, "a") as f:
                f.write(json.dumps(run, default=str) + "\n")
            if not run["ok"]:
                logger.warning("%s on %s failed: %s", c.name, case.case_id, run["error"])
                if not workers[c.name].process.is_alive():
                    workers.pop(c.name).close()
            progress.scores.add(run)
            on_run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop, but still report what has finished
        logger.warning("interrupted: reporting the %d runs that finished", len(progress.runs))
        progress.setup["_interrupted"] = {"ok": False, "error": f"interrupted after {len(progress.runs)} runs"}
    finally:
        for w in workers.values():
            w.close()


def _median_stages(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for r in runs for k in r["stages_ms"]))
    return {k: statistics.median([r["stages_ms"][k] for r in runs if k in r["stages_ms"]]) for k in keys}


def _aggregate(candidates: list[Candidate], cases: list[Case], runs: list[dict[str, Any]],
               scores: _Scores) -> list[dict[str, Any]]:
    """One row per (candidate, case): medians over repeats, maxima of memory, DSCs of the first mask."""
    rows = []
    for c in candidates:
        for case in cases:
            ok = [r for r in runs if r["candidate"] == c.name and r["case"] == case.case_id and r["ok"]]
            if not ok:
                continue
            gpu = [r["gpu_peak_mb"] for r in ok if r["gpu_peak_mb"] is not None]
            score = scores.scores.get((c.name, case.case_id), {"dsc": None, "agreement": None})
            rows.append({"candidate": c.name, "case": case.case_id, "shape": list(case.shape), "repeats": len(ok),
                         "total_ms": statistics.median(r["total_ms"] for r in ok),
                         "totals_ms": [r["total_ms"] for r in ok], "stages_ms": _median_stages(ok),
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), "gpu_peak_mb": max(gpu) if gpu else None,
                         "rss_method": ok[-1]["rss_method"], "dsc": score["dsc"], "agreement": score["agreement"]})
    return rows


def _summarize(candidates: list[Candidate], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: total of per-case medians, speed-up vs the baseline, mean DSCs."""
    base = {r["case"]: r for r in rows if r["candidate"] == BASELINE}
    no_tta = {r["case"]: r["total_ms"] for r in rows if r["candidate"] == NO_TTA}
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
                    "speedup_no_tta": _ratio(no_tta, mine),
                    "dsc_whole": statistics.fmean(dsc) if dsc else None,
                    "dsc_lesion": statistics.fmean(les) if les else None,
                    "agreement_whole": statistics.fmean(agree) if agree else None,
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                    "gpu_peak_mb": max((r["gpu_peak_mb"] for r in mine if r["gpu_peak_mb"]), default=None)})
    return out


def _ratio(reference: dict[str, float], mine: list[dict[str, Any]]) -> float | None:
    """Σ reference time / Σ own time over the cases both have."""
    common = [r for r in mine if r["case"] in reference]
    return sum(reference[r["case"]] for r in common) / sum(r["total_ms"] for r in common) if common else None


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


def _result(cfg: CompareConfig, machine: dict[str, Any], cases: list[Case], candidates: list[Candidate],
            progress: _Progress) -> dict[str, Any]:
    rows = _aggregate(candidates, cases, progress.runs, progress.scores)
    summary = _summarize(candidates, rows)
    best, line = best_line(summary)
    return {"config": dataclasses.asdict(cfg), "machine": machine,
            "cases": [dataclasses.asdict(c) for c in cases], "setup": progress.setup,
            "failures": [r for r in progress.runs if not r["ok"]], "skipped": progress.skipped, "rows": rows,
            "summary": summary, "best": best["candidate"] if best else None, "best_line": line}


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """In the main thread, SIGTERM raises KeyboardInterrupt (so ``timeout`` still gets the finished runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def compare(cfg: CompareConfig, *, on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the comparison and write ``<out>/<name>.json|.md|.png``; return the result dict.

    The JSON and markdown are rewritten after every run; ``on_update(result)`` is called then too.
    """
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
    machine = machine_info()
    progress = _Progress(setup={}, runs=[], skipped=[], scores=_Scores(cases))

    def update(chart: bool = False) -> dict[str, Any]:
        result = _result(cfg, machine, cases, candidates, progress)
        result["files"] = write_reports(result, out, cfg.name, chart=chart)
        if on_update is not None:
            on_update(result)
        return result

    with tempfile.TemporaryDirectory(prefix="bench-masks-") as tmp, _sigterm_as_interrupt():
        masks = Path(cfg.masks) if cfg.masks else Path(tmp)
        _run_all(cfg, candidates, cases, masks, progress, on_run=update)
    return update(chart=True)
