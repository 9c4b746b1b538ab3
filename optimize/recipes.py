"""``optimize_bundle``: chained recipes (``onnx,fp16,int8,prune:0.3,distill:width=0.5,tensorrt,compile``).

Each recipe is a function in :data:`RECIPES` that transforms the working state (the current torch
network and the artifacts built so far) and appends one record to ``BundleMetadata.optimization``:
the precision actually built, the artifact, parity against its reference, patch-level accuracy and
per-patch latency before/after, the library versions and the wall time. The result is a new bundle
(always with the current torch weights as ``models/fold_<k>.pt``) that ``Engine.from_bundle`` serves.

Order: recipes that change the network (``prune``, ``distill``) come before those that convert it;
``fp16``, ``int8`` and ``tensorrt`` export the ONNX model first when ``onnx`` was not given.
A cascade bundle's nested previous stage gets the same recipes first (into the same relative folder), so
both stages are exported and parity-gated and the onnxruntime backend serves the whole cascade.
Calibration, parity and fine-tuning data are real preprocessed phantom patches: ``options.data`` (a
quiz-layout folder with ``train/`` and ``validation/``) or, when unset, phantoms synthesized on the fly.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from optimize import stages
from optimize.options import OptimizeOptions
from optimize.state import Recipe, RecipeError, RecipeFn, State
from pancreas.bundle import Artifact, Bundle, BundleMetadata, provenance

logger = logging.getLogger(__name__)

NETWORK_RECIPES = ("prune", "distill")


def parse_recipes(spec: str | list[str]) -> list[Recipe]:
    """``"prune:0.3,onnx,int8"`` (or a list) -> recipes; unknown names and bad order raise RecipeError."""
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in part.split(",")]
    recipes = []
    for item in filter(None, (i.strip() for i in items)):
        name, _, arg = item.partition(":")
        if name not in RECIPES:
            raise RecipeError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)} (comma-separated, "
                              "e.g. prune:0.3,onnx,int8)")
        recipes.append(Recipe(name, arg or None))
    if not recipes:
        raise RecipeError("no recipe given; e.g. --recipe onnx,int8")
    last_network = max((i for i, r in enumerate(recipes) if r.name in NETWORK_RECIPES), default=-1)
    first_export = min((i for i, r in enumerate(recipes) if r.name not in NETWORK_RECIPES), default=len(recipes))
    if last_network > first_export:
        raise RecipeError(f"recipe {recipes[last_network]} changes the network after {recipes[first_export]} "
                          "converted it; put prune/distill first (e.g. prune:0.3,onnx,int8)")
    return recipes


#: recipe name -> stage function ``fn(state, recipe)`` (see :mod:`optimize.stages`)
RECIPES: dict[str, RecipeFn] = {"onnx": stages.onnx, "fp16": stages.fp16, "bf16": stages.bf16, "int8": stages.int8,
                                "prune": stages.prune, "distill": stages.distill, "tensorrt": stages.tensorrt,
                                "compile": stages.compile_}


def _source(bundle: Bundle | str | Path) -> Bundle:
    """The bundle to optimize, loaded; an ensemble bundle is refused (optimize each member on its own)."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if bundle.is_ensemble:
        raise RecipeError(f"{bundle.root} is an ensemble bundle (members {sorted(bundle.members)}); optimize each "
                          "member bundle on its own (members/<name>/), then rebuild the ensemble from the results")
    return bundle


def optimize_bundle(bundle: Bundle | str | Path, recipes: str | list[str], out: str | Path, *,
                    options: OptimizeOptions = OptimizeOptions()) -> Bundle:  # noqa: B008 (frozen dataclass)
    """Run ``recipes`` on ``bundle`` and write the optimized bundle to ``out``; returns it loaded.

    Raises:
        RecipeError: unknown/misordered recipes, ``out`` not empty, no torch artifact.
        ParityError, QuantizationError, TensorRTUnavailableError, ...: from the stages.
    """
    bundle = _source(bundle)
    plan = parse_recipes(recipes)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RecipeError(f"output folder {out} is not empty; choose a new --out")
    if bundle.previous_stage is not None:  # a cascade: the same recipes (and fold) for its nested previous stage
        logger.info("cascade: optimizing the previous stage %s first", bundle.metadata.previous_stage)
        optimize_bundle(bundle.previous_stage, recipes, out / bundle.metadata.previous_stage, options=options)
    (out / "models").mkdir(parents=True, exist_ok=True)
    state = State(bundle, out, options)
    try:
        for recipe in plan:
            logger.info("recipe %s", recipe)
            RECIPES[recipe.name](state, recipe)
        rel = state.torch_weights
        torch.save(state.net.state_dict(), out / rel)
        state.artifacts.insert(0, Artifact(kind="torch", path=rel, precision="fp32", fold=state.source.fold,
                                           patch_size=state.patch))
        return _write(state, plan)
    finally:
        state.close()


def optimize_folds(bundle: Bundle | str | Path, recipes: str | list[str], out: str | Path, *,
                   options: OptimizeOptions = OptimizeOptions()) -> Bundle:  # noqa: B008 (frozen dataclass)
    """:func:`optimize_bundle` for every fold of a fold-ensemble bundle, merged into one bundle at ``out``.

    Each fold is optimized on its own (``out/.fold_<k>``); its files are then moved into ``out/models`` as
    ``fold_<k>_<name>`` (torch weights keep ``fold_<k>.pt``) and its stage records are tagged with the fold.
    """
    bundle = _source(bundle)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RecipeError(f"output folder {out} is not empty; choose a new --out")
    if bundle.previous_stage is not None:
        raise RecipeError(f"{bundle.root} is a cascade; optimize one fold of both stages at a time (--fold k), "
                          "not --fold all")
    folds = list(dict.fromkeys(a.fold for a in bundle.artifacts("torch", "fp32")))
    if not folds:
        raise RecipeError(f"bundle {bundle.root} has no fp32 torch artifact to optimize")
    artifacts: list[Artifact] = []
    records: list[dict[str, Any]] = []
    first: Bundle | None = None
    for fold in folds:
        part = optimize_bundle(bundle, recipes, out / f".fold_{fold}", options=replace(options, fold=fold))
        first = first or part
        for art in part.metadata.artifacts:
            name = Path(art.path).name
            rel = art.path if name == f"fold_{fold}.pt" else f"models/fold_{fold}_{name}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(part.path(art)), out / rel)
            artifacts.append(art.model_copy(update={"path": rel}))
        records += [{**r, "fold": fold} for r in part.metadata.optimization[len(bundle.metadata.optimization):]]
    assert first is not None
    meta = first.metadata.model_copy(update={
        "artifacts": artifacts, "optimization": [*bundle.metadata.optimization, *records],
        "inference": {**first.metadata.inference,
                      "recommended": _recommended(artifacts, records)}})
    written = Bundle.write(out, meta, first.plans, first.dataset)
    for fold in folds:
        shutil.rmtree(out / f".fold_{fold}", ignore_errors=True)
    return written


def _write(state: State, plan: list[Recipe]) -> Bundle:
    src = state.bundle.metadata
    changed = any(r.name in NETWORK_RECIPES for r in plan)
    inference = {**src.inference, "recommended": _recommended(state.artifacts, state.records)}
    meta = BundleMetadata(name=f"{src.name}-{'-'.join(r.name for r in plan)}", version=src.version,
                          description=f"{src.description} | optimized: {','.join(map(str, plan))}".strip(" |"),
                          labels=src.labels, subtypes=src.subtypes, network=state.config,
                          artifacts=state.artifacts,
                          metrics={"teacher": src.metrics} if changed and src.metrics else dict(src.metrics),
                          optimization=[*src.optimization, *state.records], inference=inference,
                          training_data=src.training_data, previous_stage=src.previous_stage,
                          provenance=provenance(state.options.command))
    return Bundle.write(state.out, meta, state.bundle.plans, state.bundle.dataset)


#: serving preference among the built artifacts: (kind, precision) -> backend
_PREFERENCE = ((("tensorrt", "int8"), "tensorrt"), (("tensorrt", "fp16"), "tensorrt"), (("tensorrt", "fp32"), "tensorrt"),
               (("onnx", "int8"), "onnxruntime"), (("onnx", "fp32"), "onnxruntime"))


def _recommended(artifacts: list[Artifact], records: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The backend/precision to serve by default (TensorRT on a GPU, else INT8/fp32 onnxruntime, else torch).

    INT8 onnxruntime is skipped when its own stage measured it slower than the fp32 model it came from
    (narrow networks on CPU: the Q/DQ overhead outweighs the int8 convolutions). Torch under bf16 autocast
    (the ``bf16`` stage) is served instead of onnxruntime or torch fp32 when it measured faster per patch than
    they did in this run; at run time a CPU without native bf16 falls back to fp32
    (:func:`pancreas.backends.resolve`).
    """
    records = records or []
    built = {(a.kind, a.precision) for a in artifacts}
    int8 = _record(records, "int8")
    if int8 is not None and (int8["latency_ms_per_patch"].get("speedup") or 0) < 1.0:
        built.discard(("onnx", "int8"))
    choice = next(({"backend": backend, "precision": precision} for (kind, precision), backend in _PREFERENCE
                   if (kind, precision) in built), {"backend": "torch", "precision": "fp32"})
    bf16 = _record(records, "bf16")
    if bf16 is None or choice["backend"] == "tensorrt" or not bf16["parity"]["passed"]:
        return choice
    if choice["backend"] == "torch":
        rival = bf16["latency_ms_per_patch"]["before"]  # torch fp32, measured by the bf16 stage itself
    else:
        stage = _record(records, "int8" if choice["precision"] == "int8" else "onnx")
        rival = stage["latency_ms_per_patch"]["after"] if stage is not None else None
    if rival is not None and bf16["latency_ms_per_patch"]["after"] < rival:
        return {"backend": "torch", "precision": "bf16"}
    return choice


def _record(records: list[dict[str, Any]], recipe: str) -> dict[str, Any] | None:
    """The last record of ``recipe`` (its name without the argument)."""
    return next((r for r in reversed(records) if r.get("recipe", "").split(":")[0] == recipe), None)
