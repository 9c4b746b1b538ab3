"""Choose among configurations and their ensembles by out-of-fold scores (``pancreas find-best``).

Like ``nnUNetv2_find_best_configuration``: given the fold bundles of several configurations of one dataset
(e.g. ``3d_fullres``, ``2d``, ``3d_cascade_fullres``) and the dataset's splits, every held-out case is predicted
by each configuration's own fold model through the engine (:func:`training.oof.fold_engines`), once, as
canonical probabilities; every candidate (each configuration alone, every pair, and all together) is then
the average of its members' probabilities, computed in memory per case (argmax, post-processing as the
first member records it), written on the case's original grid and scored as ``pancreas oof`` scores it.
A single configuration scored this way equals its ``pancreas oof`` (argmax of softmax = argmax of logits).

The choice (:data:`CRITERION`): the highest mean of whole and lesion DSC on the real cases when there are
any, else on all cases; ties go to the candidate with fewer members (listed first, as in nnU-Net). Outputs
in ``out``: ``find_best.json`` and ``find_best.md`` (per candidate and source: DSC, NSD, HD95, subtype
macro-F1 or recall, seconds per case) and ``best/``, the chosen bundle: a copy of the single best bundle or an
ensemble bundle of the chosen members (:func:`pancreas.bundle.write_ensemble`), its scores in ``metrics``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pancreas.bundle import Bundle, write_ensemble
from pancreas.engine import Engine, EngineConfig
from pancreas.ensemble_engine import combine
from pancreas.errors import DatasetError
from pancreas.evaluation import jsonable
from pancreas.nifti import read_volume
from pancreas.quiz import mask_name
from pancreas.sources import REAL
from training.export import record_metrics
from training.oof import REPORT_KEYS, OOFReport, case_files, check_folds, fold_engines, score_row

logger = logging.getLogger(__name__)

CRITERION = ("mean of whole and lesion DSC, out of fold, on the real cases when there are any, else on all "
             "cases; ties: fewer members first")


@dataclass(frozen=True)
class Candidate:
    """A configuration alone (one member) or an ensemble of several, by configuration name."""

    members: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.members)


def candidates(names: Sequence[str], *, ensembles: bool = True) -> list[Candidate]:
    """Each configuration, then (with ``ensembles``) every pair, then all together (when more than two)."""
    out = [Candidate((n,)) for n in names]
    if ensembles:
        out += [Candidate(pair) for pair in itertools.combinations(names, 2)]
        if len(names) > 2:
            out.append(Candidate(tuple(names)))
    return out


def criterion(rows: Sequence[Mapping[str, Any]]) -> tuple[float, str]:
    """``(score, cases used)`` of :data:`CRITERION`; NaN when no case has a finite DSC."""
    real = [r for r in rows if r["source"] == REAL]
    used = real or list(rows)
    means = [_nanmean([r[k] for r in used]) for k in ("whole_dsc", "lesion_dsc")]
    return _nanmean(means), (REAL if real else "all")


def _nanmean(values: Sequence[float | None]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


@dataclass
class FindBestResult:
    """Out-of-fold rows and seconds per case of every candidate, and the choice."""

    candidates: list[Candidate]
    rows: dict[str, list[dict[str, Any]]]
    seconds: dict[str, list[float]]
    best: str
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One entry per candidate: the criterion, per-source summaries (:class:`OOFReport`), s/case."""
        out = []
        for cand in self.candidates:
            score, used = criterion(self.rows[cand.name])
            summary = OOFReport(self.rows[cand.name], cand.name).summary()
            out.append({"candidate": cand.name, "members": list(cand.members), "score": score,
                        "score_on": used, "seconds_per_case": float(np.mean(self.seconds[cand.name])),
                        "n_cases": len(self.rows[cand.name]),
                        "sources": {src: {**{k: s[k] for k in REPORT_KEYS},
                                          "macro_f1": s["subtype"]["macro_f1"], "subtype": s["subtype"]}
                                    for src, s in summary.items()}})
        return out

    def to_json(self) -> dict[str, Any]:
        return jsonable({"criterion": CRITERION, "best": self.best, "table": self.table(),
                         "cases": self.rows, "seconds_per_case": self.seconds})

    def markdown(self) -> str:
        keys = ("whole_dsc", "lesion_dsc", "whole_nsd2", "whole_hd95", "lesion_hd95", "macro_f1")
        lines = [f"Criterion: {CRITERION}.", "", f"**Best: `{self.best}`**", "",
                 "| candidate | score | on | source | cases | " + " | ".join(keys) + " | s/case |",
                 "| --- " * (len(keys) + 6) + "|"]
        for entry in self.table():
            for source, s in entry["sources"].items():
                n = sum(r["source"] == source for r in self.rows[entry["candidate"]])
                mark = " **(best)**" if entry["candidate"] == self.best else ""
                cells = " | ".join(_fmt(s[k]) for k in keys)
                lines.append(f"| {entry['candidate']}{mark} | {_fmt(entry['score'])} | {entry['score_on']} | "
                             f"{source} | {n} | {cells} | {entry['seconds_per_case']:.2f} |")
        return "\n".join(lines)

    def write(self, out: Path) -> dict[str, str]:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "find_best.json", "markdown": out / "find_best.md"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=1))
        paths["markdown"].write_text("# Best configuration (out of fold)\n\n" + self.markdown() + "\n")
        self.files.update({k: str(v) for k, v in paths.items()})
        return self.files


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _engines(bundles: Mapping[str, Bundle], splits: Sequence[Mapping[str, Any]], config: EngineConfig
             ) -> dict[str, dict[str, Engine]]:
    """``{configuration: {fold: engine}}``; every configuration must have the same folds, each in ``splits``."""
    engines = {name: fold_engines(bundle, config) for name, bundle in bundles.items()}
    for name, by_fold in engines.items():
        check_folds(by_fold, splits, bundles[name].root)
    fold_sets = {name: sorted(by_fold) for name, by_fold in engines.items()}
    if len({tuple(f) for f in fold_sets.values()}) != 1:
        raise DatasetError(f"the configurations have different folds {fold_sets}; export every configuration "
                           "with the same folds of the same splits")
    return engines


def find_best(bundles: Mapping[str, str | Path | Bundle], raw_dataset: str | Path,
              splits: Sequence[Mapping[str, Any]], *, out: str | Path, subtypes: Mapping[str, int],
              sources: Mapping[str, str], scored_sources: Sequence[str] | None = None,
              ensembles: bool = True, config: EngineConfig | None = None) -> FindBestResult:
    """Score every candidate out of fold, pick the best (:data:`CRITERION`), write the table and ``out/best``.

    Args:
        bundles: configuration name -> its fold bundle (one artifact per fold of ``splits``).
        raw_dataset: the nnU-Net raw dataset folder (``imagesTr/``, ``labelsTr/``).
        splits: nnU-Net's ``splits_final.json`` content.
        scored_sources: sources that trained the classifier (None: all); see :func:`training.oof.out_of_fold`.
        ensembles: also score every pair and all configurations together.
        config: engine options (default: torch on CPU).
    """
    from tqdm.auto import tqdm

    if not bundles:
        raise DatasetError("no configuration given; pass at least one --model NAME=BUNDLE")
    out, raw = Path(out), Path(raw_dataset)
    if (out / "best").exists():
        raise DatasetError(f"{out / 'best'} already exists; choose a new --out")
    loaded = {name: b if isinstance(b, Bundle) else Bundle.load(b) for name, b in bundles.items()}
    engines = _engines(loaded, splits, config or EngineConfig(backend="torch", device="cpu"))
    cands = candidates(list(loaded), ensembles=ensembles)
    rows: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cands}
    seconds: dict[str, list[float]] = {c.name: [] for c in cands}
    jobs = [(fold, case) for fold in next(iter(engines.values())) for case in splits[int(fold)]["val"]]
    with tempfile.TemporaryDirectory(prefix="find-best-") as tmp:
        for fold, case in tqdm(jobs, desc="find-best", unit="case"):
            image, label = case_files(raw, case)
            volume = read_volume(image)
            soft, soft_s = {}, {}
            for name, by_fold in engines.items():
                start = time.perf_counter()
                soft[name] = by_fold[fold].predict_soft(volume)
                soft_s[name] = time.perf_counter() - start
            for cand in cands:
                start = time.perf_counter()
                first = engines[cand.members[0]][fold]
                pred = combine({m: soft[m] for m in cand.members}, volume, first.post, weights=first.class_weights)
                seconds[cand.name].append(sum(soft_s[m] for m in cand.members) + time.perf_counter() - start)
                pred_path = Path(tmp) / mask_name(case)
                volume.write_mask(pred.mask, pred_path)
                rows[cand.name].append(score_row(pred, pred_path, label, fold=fold, subtypes=subtypes,
                                                 sources=sources, scored_sources=scored_sources))
    result = FindBestResult(cands, rows, seconds, best=_choose(cands, rows))
    result.write(out)
    result.files["bundle"] = str(write_chosen(result, loaded, out / "best"))
    logger.info("best of %d candidates: %s (%s)", len(cands), result.best, CRITERION)
    return result


def _choose(cands: Sequence[Candidate], rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The candidate with the highest criterion (NaN lowest); the first (fewest members) on ties."""
    scores = [criterion(rows[c.name])[0] for c in cands]
    keyed = [-math.inf if math.isnan(s) else s for s in scores]
    return cands[int(np.argmax(keyed))].name


def write_chosen(result: FindBestResult, bundles: Mapping[str, Bundle], root: Path) -> Path:
    """The chosen bundle at ``root`` with its find-best figures in ``metadata.metrics``."""
    entry = next(e for e in result.table() if e["candidate"] == result.best)
    metrics = jsonable({"find_best": {"criterion": CRITERION, "score": entry["score"], "score_on": entry["score_on"],
                                      "seconds_per_case": entry["seconds_per_case"], "sources": entry["sources"],
                                      "candidates": {e["candidate"]: e["score"] for e in result.table()}}})
    members = next(c.members for c in result.candidates if c.name == result.best)
    if len(members) == 1:
        shutil.copytree(bundles[members[0]].root, root)
        record_metrics(root, metrics)
    else:
        write_ensemble(root, {m: bundles[m] for m in members}, name=f"ensemble-{result.best}",
                       description=f"ensemble over configurations {', '.join(members)} chosen by pancreas find-best",
                       metrics=metrics)
    return root


def parse_models(specs: Sequence[str]) -> dict[str, Path]:
    """``NAME=BUNDLE`` (or ``BUNDLE``: named after its folder) -> ``{name: path}``; names must be unique."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else (Path(spec).name, spec)
        if not name or not path or name in models or "+" in name:
            raise DatasetError(f"--model {spec!r}: give NAME=BUNDLE with a unique NAME without '+' "
                               f"(names so far: {sorted(models)})")
        models[name] = Path(path)
    return models
