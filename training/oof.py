"""Out-of-fold cross-validation through the inference engine, on each case's original grid.

Each fold model of a bundle predicts exactly the cases its fold held out (nnU-Net's ``splits_final.json``)
with the same engine, preprocessing and post-processing users get from ``pancreas predict``; masks are
scored on the case's own voxel grid against its raw label. So the figures are what a user would measure
on unseen cases of the same data, not the network-grid pseudo-metrics of training. Every row and summary
is labelled with the case's source (real / phantom): real and phantom figures are never pooled.

Subtype figures: only sources whose cases trained the classifier *and* cover several subtypes give a
macro-F1; for the others the report gives the recall of each subtype present (e.g. the real quiz cases
here are all subtype 2 plus one subtype 0, so recall is the only real classification figure).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pancreas.backends import create_backend, resolve, select_artifacts
from pancreas.bundle import Bundle
from pancreas.engine import Engine, EngineConfig, Prediction
from pancreas.errors import DatasetError
from pancreas.evaluation import SEGMENTATION_KEYS, jsonable, score_case, summarize_rows
from pancreas.lesion_size import size_strata, strata_markdown
from pancreas.metrics import macro_f1
from pancreas.nifti import read_volume
from pancreas.quiz import image_name, mask_name
from pancreas.sources import UNKNOWN

logger = logging.getLogger(__name__)

REPORT_KEYS = SEGMENTATION_KEYS


@dataclass
class OOFReport:
    """Per-case out-of-fold rows plus summaries per source."""

    rows: list[dict[str, Any]]
    bundle: str
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for source in sorted({r["source"] for r in self.rows}):
            rows = [r for r in self.rows if r["source"] == source]
            block = summarize_rows(rows, [], [])
            block["subtype"] = subtype_block(rows)
            block["per_fold"] = {str(f): {k: float(np.nanmean([r[k] for r in rows if r["fold"] == f]))
                                          for k in ("whole_dsc", "lesion_dsc")}
                                 for f in sorted({r["fold"] for r in rows}, key=str)}
            out[source] = block
        return out

    @classmethod
    def read(cls, path: str | Path) -> OOFReport:
        """A report from its ``oof.json`` (undefined metrics, written as null, are NaN again)."""
        data = json.loads(Path(path).read_text())
        return cls.from_json_rows(data["cases"], data["bundle"])

    @classmethod
    def from_json_rows(cls, rows: Sequence[Mapping[str, Any]], bundle: str) -> OOFReport:
        """A report from rows read back from JSON (an ``oof.json``'s, or a kept per-case table's)."""
        return cls([_restore_nan(dict(r)) for r in rows], bundle)

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "summary": self.summary(), "cases": self.rows}

    def markdown(self) -> str:
        lines = ["| data | cases | " + " | ".join(REPORT_KEYS) + " |", "| --- " * (len(REPORT_KEYS) + 2) + "|"]
        for source, s in self.summary().items():
            cells = [f"{_fmt(s[k])} ± {_fmt(s['std'][k])}" for k in REPORT_KEYS]
            lines.append(f"| {source} | {s['n_cases']} | " + " | ".join(cells) + " |")
        lines += ["", "Subtype (out-of-fold):", ""]
        for source, s in self.summary().items():
            lines.append(f"- {source}: {describe_subtypes(s['subtype'])}")
        for source in sorted({r["source"] for r in self.rows}):
            strata = size_strata([r for r in self.rows if r["source"] == source])
            if any(b.n for b in strata):
                lines += ["", f"Lesion DSC by true lesion volume ({source}, out-of-fold):", "", strata_markdown(strata)]
        header = ("| case | source | fold | whole DSC | lesion DSC | whole NSD@2mm | whole HD95 mm | true subtype | "
                  "predicted | pancreas mL |")
        lines += ["", header, "| --- " * 10 + "|"]
        for r in sorted(self.rows, key=lambda r: (r["source"], r["case_id"])):
            lines.append(f"| {r['case_id']} | {r['source']} | {r['fold']} | {_fmt(r['whole_dsc'])} | "
                         f"{_fmt(r['lesion_dsc'])} | {_fmt(r['whole_nsd2'])} | {_fmt(r['whole_hd95'])} | "
                         f"{r['gt_subtype']} | {r['pred_subtype']} | {r['pancreas_ml']:.1f} |")
        return "\n".join(lines)

    def bundle_metrics(self, prefix: str = "oof") -> dict[str, Any]:
        """Flat ``{source}_{prefix}_*`` means (and sds) to record in the bundle's metadata, per source:
        ``oof`` for the bundle's own fold models, ``recipe_cv`` for the folds of the recipe a bundle trained on
        every case with (it has no held-out case of its own). Rows that know their true lesion volume add
        ``{source}_{prefix}_lesion_by_size`` (:mod:`pancreas.lesion_size` bins)."""
        out: dict[str, Any] = {}
        for source, s in self.summary().items():
            for key in REPORT_KEYS:
                out[f"{source}_{prefix}_{key}"] = s[key]
                out[f"{source}_{prefix}_{key}_sd"] = s["std"][key]
            out[f"{source}_{prefix}_n_cases"] = s["n_cases"]
            out[f"{source}_{prefix}_subtype"] = s["subtype"]
            if any(b["n"] for b in s["lesion_size"]):  # rows that know their true lesion volume
                out[f"{source}_{prefix}_lesion_by_size"] = s["lesion_size"]
        return jsonable(out)

    def write_rows(self, out: str | Path) -> Path:
        """Only ``oof.json`` (cheap: written after every case so an interrupted run can resume)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "oof.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(jsonable(self.to_json()), indent=1))
        tmp.replace(path)
        return path

    def write(self, out: str | Path) -> dict[str, str]:
        out = Path(out)
        paths = {"json": self.write_rows(out), "markdown": out / "oof.md", "png": out / "oof_dsc.png"}
        paths["markdown"].write_text(f"# Out-of-fold results of `{self.bundle}`\n\n" + self.markdown() + "\n")
        plot_cases(self.rows, paths["png"])
        self.files = {k: str(v) for k, v in paths.items()}
        return self.files


def subtype_block(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-subtype recall, and macro-F1 when all three subtypes are present; ``classifier_trained`` says
    whether these cases' source trained the classifier (if not, the figures are out-of-domain)."""
    scored = [r for r in rows if r.get("gt_subtype") is not None]
    truth = [int(r["gt_subtype"]) for r in scored]
    pred = [int(r["pred_subtype"]) for r in scored]
    present = sorted(set(truth))
    recall = {str(k): float(np.mean([p == k for t, p in zip(truth, pred) if t == k])) for k in present}
    return {"n_cases": len(scored), "present": present, "recall": recall,
            "macro_f1": macro_f1(truth, pred) if len(present) == 3 else None,
            "counts": {str(k): truth.count(k) for k in present},
            "classifier_trained": all(r.get("subtype_scored", True) for r in scored)}


def describe_subtypes(block: Mapping[str, Any]) -> str:
    if not block["n_cases"]:
        return "no subtype-labelled cases"
    recall = ", ".join(f"subtype {k}: recall {v:.3f} (n={block['counts'][k]})" for k, v in block["recall"].items())
    f1 = f"macro-F1 {block['macro_f1']:.4f}; " if block.get("macro_f1") is not None else \
        "no macro-F1 (not all three subtypes present, so recall is the only figure); "
    trained = "" if block.get("classifier_trained", True) else \
        " (the classifier was not trained on this source: an out-of-domain figure)"
    return f1 + recall + trained


def plot_cases(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Sorted per-case whole and lesion DSC, one line per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key in zip(axes, ("whole_dsc", "lesion_dsc")):
        for source in sorted({r["source"] for r in rows}):
            vals = np.sort([r[key] for r in rows if r["source"] == source])
            ax.plot(np.arange(1, len(vals) + 1), vals, marker=".", label=f"{source} (mean {np.nanmean(vals):.3f})")
        ax.set_title(f"out-of-fold {key.replace('_', ' ')} per case (sorted)")
        ax.set_xlabel("case rank")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fold_engines(bundle: Bundle, config: EngineConfig) -> dict[str, Engine]:
    """One engine per fold artifact of the kind the config's backend runs (``{fold: engine}``); a cascade's fold-k
    engine runs fold k of both stages."""
    arts = select_artifacts(bundle, *resolve(bundle, config))  # precision may be auto
    previous = fold_engines(bundle.previous_stage, config) if bundle.previous_stage is not None else {}
    lacking = sorted(str(a.fold) for a in arts if previous and str(a.fold) not in previous)
    if lacking:
        raise DatasetError(f"cascade {bundle.root}: fold(s) {lacking} have no fold in its previous stage "
                           f"{bundle.metadata.previous_stage} (it has {sorted(previous)}); export both stages' folds")
    engines = {str(a.fold): Engine(bundle, config, create_backend(bundle, config, artifact=a),
                                   previous=previous.get(str(a.fold))) for a in arts}
    if not engines:
        raise DatasetError(f"bundle {bundle.root} has no fold artifacts for backend {config.backend!r}")
    return engines


def check_folds(engines: Mapping[str, Any], splits: Sequence[Mapping[str, Any]], where: str | Path) -> None:
    """Refuse fold engines without a split in ``splits`` (out-of-fold needs integer folds of that dataset)."""
    missing = [f for f in engines if not f.isdigit() or int(f) >= len(splits)]
    if missing:
        raise DatasetError(f"fold(s) {missing} of {where} have no split in splits_final.json "
                           f"({len(splits)} folds); out-of-fold needs integer folds of the same dataset")


def case_files(raw: Path, case: str) -> tuple[Path, Path]:
    """``(image, label)`` of a training case of the raw dataset ``raw``; DatasetError when either is missing."""
    image, label = raw / "imagesTr" / image_name(case), raw / "labelsTr" / mask_name(case)
    if not image.is_file() or not label.is_file():
        raise DatasetError(f"{image} or {label} is missing; is {raw} the dataset the bundle was trained on?")
    return image, label


def score_row(pred: Prediction, pred_path: Path, label: Path, *, fold: str, subtypes: Mapping[str, int],
              sources: Mapping[str, str], scored_sources: Sequence[str] | None) -> dict[str, Any]:
    """One out-of-fold row: the written mask ``pred_path`` scored against ``label``, with source and subtype."""
    row = score_case(pred_path, label)
    source = sources.get(row["case_id"], UNKNOWN)
    row.update({"fold": fold, "source": source, "gt_subtype": subtypes.get(row["case_id"]),
                "pred_subtype": pred.subtype, "probabilities": pred.probabilities,
                "pancreas_ml": pred.volumes_ml["pancreas"],
                "subtype_scored": scored_sources is None or source in scored_sources})
    return row


def out_of_fold(bundle: str | Path | Bundle, raw_dataset: str | Path, splits: Sequence[Mapping[str, Any]], *,
                out: str | Path, subtypes: Mapping[str, int], sources: Mapping[str, str],
                scored_sources: Sequence[str] | None = None,
                config: EngineConfig | None = None, resume: bool = False) -> OOFReport:
    """Predict every held-out case with its own fold's model; score it on its original grid.

    Args:
        raw_dataset: the nnU-Net raw dataset folder (``imagesTr/``, ``labelsTr/``).
        splits: nnU-Net's ``splits_final.json`` content (fold ``k`` -> ``{"train", "val"}``).
        scored_sources: sources that trained the classifier (None: all); others are flagged out-of-domain.
        config: engine options (default: torch on CPU).
        resume: reuse the rows of an earlier report in ``out`` made by the same fold weights and settings
            (a bundle re-exported with more folds then only predicts the new folds' cases).
    """
    from tqdm.auto import tqdm

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    raw, out = Path(raw_dataset), Path(out)
    config = config or EngineConfig(backend="torch", device="cpu")
    engines = fold_engines(bundle, config)
    check_folds(engines, splits, bundle.root)
    prints = fold_fingerprints(bundle, config, engines)
    done = scored_rows(out, prints) if resume else {}
    jobs = [(fold, case) for fold in engines for case in splits[int(fold)]["val"]]
    if done:
        logger.info("resuming %s: %d of %d held-out cases already scored with the same fold models and settings",
                    out, sum((f, c) in done for f, c in jobs), len(jobs))
    rows = []
    for fold, case in tqdm(jobs, desc="out-of-fold", unit="case"):
        if (fold, case) in done:
            rows.append(done[(fold, case)])
            continue
        image, label = case_files(raw, case)
        volume = read_volume(image)
        pred = engines[fold].predict(volume)
        pred_path = out / "masks" / mask_name(case)
        volume.write_mask(pred.mask, pred_path)
        rows.append({**score_row(pred, pred_path, label, fold=fold, subtypes=subtypes, sources=sources,
                                 scored_sources=scored_sources), "engine": prints[fold]})
        OOFReport(rows, str(bundle.root)).write_rows(out)  # an interrupted run resumes from here
    report = OOFReport(rows, str(bundle.root))
    report.write(out)
    return report


def fold_fingerprints(bundle: Bundle, config: EngineConfig, engines: Mapping[str, Engine]) -> dict[str, dict]:
    """What makes a fold's out-of-fold row reusable: its weights (artifact sha256, the previous stage's too)
    and the engine settings that change a mask."""
    def shas(b: Bundle) -> dict[str, str | None]:
        return {str(a.fold): a.sha256 for a in select_artifacts(b, *resolve(b, config))}

    own, previous = shas(bundle), shas(bundle.previous_stage) if bundle.previous_stage is not None else {}
    out = {}
    for fold, engine in engines.items():
        info = engine.info
        weights = engine.class_weights
        out[fold] = jsonable({"artifact_sha256": own.get(fold), "previous_sha256": previous.get(fold),
                              **{k: info[k] for k in ("backend", "precision", "step_size", "tta", "scales", "mirror_axes")},
                              "postprocess": None if engine.post is None else asdict(engine.post),
                              "class_weights": None if weights is None else [float(w) for w in weights]})
    return out


def scored_rows(out: Path, prints: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of an earlier ``out/oof.json`` that can be reused: same fold weights and settings, mask on disk."""
    path = out / "oof.json"
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())["cases"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot resume from {path}: not an out-of-fold report ({exc}); remove it or "
                           "choose another --out") from exc
    return {(r["fold"], r["case_id"]): _restore_nan(r) for r in rows
            if r.get("fold") in prints and r.get("engine") == prints[r["fold"]]
            and (out / "masks" / mask_name(r["case_id"])).is_file()}


def _restore_nan(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from JSON: its undefined metrics (written as null) are NaN again."""
    return {**row, **{k: float("nan") for k in SEGMENTATION_KEYS if row.get(k, 0.0) is None}}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.4f}"


@dataclass(frozen=True)
class HeldOutData:
    """What out-of-fold scoring reads of a converted dataset: raw folder, nnU-Net splits, subtypes, sources."""

    raw: Path
    splits: list[dict[str, Any]]
    subtypes: dict[str, int]
    sources: dict[str, str]


def held_out_data(dataset: str | int, workdir: str | Path) -> HeldOutData:
    """The dataset's raw folder, ``splits_final.json`` and subtype/source tables (nnU-Net folders under ``workdir``)."""
    from training.nnunet_env import configure, resolve_dataset
    from training.subtypes import read_sources, read_subtypes

    paths = configure(workdir)
    name = resolve_dataset(dataset, paths)
    raw = paths.raw / name
    splits = json.loads((paths.preprocessed / name / "splits_final.json").read_text())
    return HeldOutData(raw, splits, read_subtypes(raw), read_sources(raw))

