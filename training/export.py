"""Training output -> model bundle (``pancreas export-bundle``).

Reads each fold's ``checkpoint_final.pth`` (or ``checkpoint_best.pth``) from nnU-Net's results folder,
checks that its ``network_weights`` load strictly into the :class:`~pancreas.network.MultiTaskUNet`
described by the fold's ``network_config.json`` and the plans, and writes::

    OUT/models/fold_{k}.pt        state dict of MultiTaskUNet (artifact kind "torch", fp32)
    OUT/configs/plans.json        the plans the folds were trained with
    OUT/configs/dataset.json
    OUT/configs/metadata.json     NetworkConfig incl. head, label map, CV metrics, provenance (incl. command)

A cascade stage (``3d_cascade_fullres``: its plans name a ``previous_stage``) also gets the previous stage's
folds (same folds, trainer and plans) exported as a complete nested bundle in ``OUT/stages/<previous>/``,
named by ``metadata.previous_stage``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas.bundle import Artifact, Bundle, BundleMetadata, NetworkConfig, provenance
from pancreas.domain import measure
from pancreas.errors import BundleError
from pancreas.network import load_network
from pancreas.quiz import image_name, mask_name
from training.nnunet_env import current, resolve_dataset
from training.runner import fold_output_folder
from training.subtypes import read_subtype_rows, source_counts

logger = logging.getLogger(__name__)

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
DEFAULT_LICENCE_NOTE = "training data licence: as stated by each source (not recorded here)"


def read_fold(folder: Path, checkpoint: str = "final") -> tuple[dict[str, torch.Tensor], NetworkConfig, dict]:
    """(state dict, network config, held-out metrics) of one trained fold folder."""
    ckpt = folder / CHECKPOINTS[checkpoint]
    cfg_file = folder / "network_config.json"
    if not ckpt.is_file() or not cfg_file.is_file():
        raise BundleError(f"{folder} has no {ckpt.name} / network_config.json; train the fold first "
                          "(`pancreas train`)", code="bundle_incomplete")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["network_weights"]
    config = NetworkConfig.model_validate_json(cfg_file.read_text())
    metrics_file = folder / "validation_metrics.json"
    metrics = json.loads(metrics_file.read_text())["summary"] if metrics_file.is_file() else {}
    return dict(state), config, metrics  # no copies: encoder and decoder.encoder share storage


def export_bundle(dataset: str | int, *, configuration: str, folds: Sequence[int | str], plans_identifier: str,
                  out: str | Path, da5: bool = False, checkpoint: str = "final", name: str | None = None,
                  trainer_name: str | None = None,
                  description: str = "", metrics: dict[str, Any] | None = None,
                  inference: dict[str, Any] | None = None, command: str | list[str] | None = None,
                  licence_note: str = DEFAULT_LICENCE_NOTE) -> Bundle:
    """Write a bundle of ``folds`` to ``out`` (replaced if it exists) and return it, loaded and validated.

    ``training_data`` (sources, per-task data, licence note, input domain) is derived from the dataset's
    subtype table and the first fold's ``train_options.json``.
    """
    if checkpoint not in CHECKPOINTS:
        raise BundleError(f"checkpoint {checkpoint!r} is unknown; use one of {sorted(CHECKPOINTS)}")
    folders = [fold_output_folder(dataset, configuration=configuration, fold=f, plans_identifier=plans_identifier,
                                  da5=da5, trainer_name=trainer_name) for f in folds]
    base = folders[0].parent
    plans = json.loads((base / "plans.json").read_text())
    plans.pop("continue_training", None)
    dataset_json = json.loads((base / "dataset.json").read_text())
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    previous = _export_previous_stage(dataset, plans, configuration, folds=folds, plans_identifier=plans_identifier,
                                      out=out, da5=da5, checkpoint=checkpoint, name=name, trainer_name=trainer_name,
                                      command=command, licence_note=licence_note)
    artifacts, fold_metrics, config = [], {}, None
    patch = [int(p) for p in PlansManager(copy.deepcopy(plans)).get_configuration(configuration).patch_size]
    for fold, folder in zip(folds, folders):
        state, fold_cfg, fmetrics = read_fold(folder, checkpoint)
        if config is not None and fold_cfg != config:
            raise BundleError(f"fold {fold} was trained with a different network ({fold_cfg.head}) than fold "
                              f"{folds[0]}; export folds of one run only")
        config = fold_cfg
        load_network(plans, config, state)  # strict: refuses a mismatching checkpoint now, not at serving time
        path = f"models/fold_{fold}.pt"
        torch.save(state, out / path)
        artifacts.append(Artifact(kind="torch", path=path, precision="fp32", fold=fold, patch_size=patch))
        fold_metrics[str(fold)] = fmetrics
    all_metrics = {"folds": fold_metrics, **_cv_summary(base)}
    all_metrics.update(metrics or {})
    meta = BundleMetadata(name=name or f"{plans['dataset_name']}-{configuration}", description=description,
                          network=config, artifacts=artifacts, metrics=all_metrics, inference=inference or {},
                          training_data=describe_training_data(dataset, folders[0], licence_note),
                          previous_stage=previous, provenance=provenance(command))
    bundle = Bundle.write(out, meta, plans, dataset_json)
    logger.info("exported %d fold(s) to %s", len(artifacts), out)
    return bundle


def _export_previous_stage(dataset: str | int, plans: dict[str, Any], configuration: str, *, out: Path,
                           name: str | None, **kwargs: Any) -> str | None:
    """Export a cascade stage's previous stage into ``out/stages/<previous>``; its folder (None: no cascade)."""
    previous = plans["configurations"][configuration].get("previous_stage")
    if previous is None:
        return None
    rel = f"stages/{previous}"
    export_bundle(dataset, configuration=previous, out=out / rel, name=f"{name}-{previous}" if name else None,
                  **kwargs)
    return rel


def describe_training_data(dataset: str | int, fold_folder: Path, licence_note: str) -> dict[str, Any]:
    """What the folds were trained on: case counts per source, per-task sources, licence note, input domain."""
    paths = current()
    raw = paths.raw / resolve_dataset(dataset, paths)
    rows = [r for r in read_subtype_rows(raw) if r.split != "test"]
    counts = source_counts({r.case_id: r.source for r in rows})
    options_file = fold_folder / "train_options.json"
    options = json.loads(options_file.read_text()) if options_file.is_file() else {}
    cls_sources = options.get("cls_sources") or sorted(counts)
    cases = [r.case_id for r in rows if (raw / "imagesTr" / image_name(r.case_id)).is_file()]
    domain = measure([raw / "imagesTr" / image_name(c) for c in cases],
                     [raw / "labelsTr" / mask_name(c) for c in cases]) if cases else None
    return {"dataset": raw.name, "sources": counts,
            "tasks": {"segmentation": {"trained_on": sorted(counts)},
                      "classification": {"trained_on": sorted(cls_sources)}},
            "licence": licence_note, **({"domain": domain.to_json()} if domain is not None else {})}


def _cv_summary(base: Path) -> dict[str, Any]:
    path = base / "cv_summary.json"
    return {"cv": json.loads(path.read_text())["summary"]} if path.is_file() else {}


def bundle_size_mb(root: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file()) / 2 ** 20


def phantom_metrics(bundle_root: str | Path, split_dir: str | Path, work: str | Path,
                    *, threads: int | None = None, backend: str = "torch") -> dict[str, Any]:
    """Score a bundle on a labelled phantom split exactly as ``pancreas predict`` + ``pancreas evaluate`` do.

    Returns ``phantom_*`` metrics (never real-data scores) plus the settings they were measured with;
    ``phantom_per_case`` holds each case's whole / lesion DSC and predicted subtype, so that a part of the split
    can be re-scored against them.
    """
    from pancreas.engine import EngineConfig
    from pancreas.evaluation import evaluate_folders, jsonable
    from pancreas.predict import predict_cases
    from pancreas.quiz import SUBTYPE_CSV

    pred = Path(work) / "pred"
    config = EngineConfig(backend=backend, device="cpu", num_threads=threads)
    predict_cases(images=split_dir, out=pred, models=[bundle_root], config=config)
    report = evaluate_folders(pred, split_dir, pred_subtypes=pred / SUBTYPE_CSV)
    s = report.summary
    per_case = {row["case_id"]: jsonable({"whole_dsc": round(row["whole_dsc"], 4), "lesion_dsc": round(row["lesion_dsc"], 4),
                                          "pred_subtype": row["pred_subtype"]}) for row in report.per_case}
    return {"phantom_whole_dsc": s["whole_dsc"], "phantom_lesion_dsc": s["lesion_dsc"],
            "phantom_macro_f1": (s.get("subtype") or {}).get("macro_f1"),
            "phantom_accuracy": (s.get("subtype") or {}).get("accuracy"),
            "phantom_whole_nsd2": s.get("whole_nsd2"), "phantom_lesion_nsd2": s.get("lesion_nsd2"),
            "phantom_n_cases": s["n_cases"], "phantom_split": str(split_dir), "phantom_per_case": per_case,
            "phantom_measured_with": f"pancreas predict ({backend}, cpu, step 0.5; TTA, class weights and "
                                     "postprocessing as the bundle records) + pancreas evaluate"}


def record_metrics(bundle_root: str | Path, metrics: dict[str, Any]) -> Bundle:
    """Add ``metrics`` to a bundle's metadata (checksums re-verified, file re-validated)."""
    bundle = Bundle.load(bundle_root)
    meta = bundle.metadata.model_copy(deep=True)
    meta.metrics.update(metrics)
    return Bundle.write(bundle.root, meta, bundle.plans, bundle.dataset)


def phantom_report(bundle_root: str | Path, history: str | Path | None = None, train_command: str = "") -> str:
    """Markdown summary of a bundle's ``phantom_*`` metrics (and its training curve's last epoch)."""
    bundle = Bundle.load(bundle_root)
    m = bundle.metadata.metrics
    cfg = bundle.configuration
    arch = cfg["architecture"]["arch_kwargs"]
    about = (f"Bundle `{bundle.root.name}`: head `{bundle.metadata.network.head.variant}`, patch "
             f"{cfg['patch_size']}, spacing {cfg['spacing']}, features {arch['features_per_stage']}, "
             f"{bundle_size_mb(bundle.root):.1f} MB.")
    lines = ["# Demo bundle: training on synthetic phantoms (NOT real-data scores)", "", about, "",
             "| metric (held-out phantom validation split) | value | target |", "| --- | --- | --- |"]
    targets = {"phantom_whole_dsc": "≥ 0.90", "phantom_lesion_dsc": "≥ 0.60", "phantom_macro_f1": "≥ 0.80",
               "phantom_accuracy": "", "phantom_whole_nsd2": "", "phantom_lesion_nsd2": ""}
    for key, target in targets.items():
        value = m.get(key)
        lines.append(f"| {key} | {value:.4f} | {target} |" if isinstance(value, float) else f"| {key} | {value} | |")
    cases = (f"Cases: {m.get('phantom_n_cases')} ({m.get('phantom_split')}); measured with "
             f"{m.get('phantom_measured_with')}.")
    lines += ["", cases, ""]
    if history and Path(history).is_file():
        epochs = json.loads(Path(history).read_text())["epochs"]
        minutes = sum(e["time_s"] for e in epochs) / 60
        last = epochs[-1]
        trained = (f"Training: {len(epochs)} epochs, {minutes:.0f} min of epoch time on a shared 2-core CPU; "
                   f"last epoch pseudo-DSC pancreas {last['dice_pancreas']:.3f}, lesion {last['dice_lesion']:.3f}.")
        lines += [trained, ""]
    if train_command:
        lines += ["Command:", "", "```", train_command, "```", ""]
    lines.append(f"Export: `{bundle.metadata.provenance.command}`")
    return "\n".join(lines) + "\n"
