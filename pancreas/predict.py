"""Folder-level prediction (``pancreas predict``): find the CTs, run one or more bundles, write results.

Inputs: a single ``.nii``/``.nii.gz`` file, a quiz split folder (``subtype*/quiz_*_0000.nii.gz`` next to
their masks) or a flat folder of ``*_0000.nii.gz`` / ``*.nii.gz`` images. When any file ends in
``_0000``, only those are images (the rest are taken to be masks). Outputs in ``OUT``:

* ``<case>.nii.gz`` per case (case id = file name without ``_0000`` and extension), on the input's grid;
* ``subtype_results.csv`` (``Names,Subtype``, Names = ``<case>.nii.gz``), as in the quiz;
* ``predictions.json``: the model(s), and per case the probabilities, volumes, per-stage timings and
  ``warnings`` (``[{"code", "message"}]``, see :mod:`pancreas.domain`; also logged).

Several bundles are an ensemble over configurations (:mod:`pancreas.ensemble_engine`): probabilities are
averaged on the canonical grid. So is one ensemble bundle.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pancreas.engine import Engine, EngineConfig
from pancreas.ensemble_engine import ensemble_of
from pancreas.errors import DatasetError
from pancreas.nifti import read_volume
from pancreas.quiz import SUBTYPE_CSV, case_id_of, is_image, is_nifti, mask_name, write_subtype_csv

logger = logging.getLogger(__name__)


def find_cases(images: str | Path) -> list[tuple[str, Path]]:
    """(case id, image path) pairs, sorted by case id. See the module docstring for the layouts."""
    images = Path(images)
    if images.is_file():
        if not is_nifti(images.name):
            raise DatasetError(f"{images} is not a .nii/.nii.gz file")
        return [(case_id_of(images.name), images)]
    if not images.is_dir():
        raise DatasetError(f"input {images} does not exist; pass a NIfTI file or a folder of them")
    files = sorted(p for p in images.rglob("*") if p.is_file() and is_nifti(p.name))
    channel0 = [p for p in files if is_image(p.name)]
    chosen = channel0 or files
    if not chosen:
        raise DatasetError(f"no .nii/.nii.gz images found under {images}")
    cases: dict[str, Path] = {}
    for p in chosen:
        cid = case_id_of(p.name)
        if cid in cases:
            raise DatasetError(f"case id {cid!r} occurs twice ({cases[cid]} and {p}); case ids must be unique")
        cases[cid] = p
    return sorted(cases.items())


def predict_cases(images: str | Path, out: str | Path, models: list[str | Path],
                  config: EngineConfig | None = None) -> dict[str, Any]:
    """Predict every case under ``images`` with the bundle(s) ``models``; write masks, CSV and JSON."""
    from tqdm.auto import tqdm

    if not models:
        raise DatasetError("no model bundle given; pass at least one --model BUNDLE")
    config = config or EngineConfig()
    cases = find_cases(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engines = [Engine.from_bundle(m, config) for m in models]
    engine = ensemble_of(engines, config)
    engine.warmup()
    results: dict[str, Any] = {}
    for cid, path in tqdm(cases, desc="cases", unit="case"):
        start = time.perf_counter()
        volume = read_volume(path)
        read_ms = (time.perf_counter() - start) * 1000.0
        pred = engine.predict(volume)
        start = time.perf_counter()
        volume.write_mask(pred.mask, out / mask_name(cid))
        stages = {k: v for k, v in pred.timings_ms.items() if k != "total"}
        timings = {"read": read_ms, **stages, "write": (time.perf_counter() - start) * 1000.0}
        timings["total"] = sum(timings.values())
        for warning in pred.warnings:
            logger.warning("%s: %s", cid, warning.message)
        results[cid] = {"image": str(path), "subtype": pred.subtype, "probabilities": pred.probabilities,
                        "volumes_ml": pred.volumes_ml, "timings_ms": timings,
                        "warnings": [w.to_json() for w in pred.warnings]}
    write_subtype_csv(out / SUBTYPE_CSV, {cid: r["subtype"] for cid, r in results.items()})
    summary = {"models": [e.info for e in engines], "config": asdict(config), "cases": results}
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    logger.info("wrote %d masks, subtype_results.csv and predictions.json to %s", len(results), out)
    return summary
