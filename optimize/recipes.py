"""``optimize_bundle``: chained recipes (``onnx,fp16,int8,prune:0.3,distill:width=0.5,tensorrt,compile``).

Each recipe is a function in :data:`RECIPES` that transforms the working state (the current torch
network and the artifacts built so far) and appends one record to ``BundleMetadata.optimization``:
the precision actually built, the artifact, parity against its reference, patch-level accuracy and
per-patch latency before/after, the library versions and the wall time. The result is a new bundle
(always with the current torch weights as ``models/fold_<k>.pt``) that ``Engine.from_bundle`` serves.

Order: recipes that change the network (``prune``, ``distill``) come before those that convert it;
``fp16``, ``int8`` and ``tensorrt`` export the ONNX model first when ``onnx`` was not given.
Calibration, parity and fine-tuning data are real preprocessed phantom patches: ``options.data`` (a
quiz-layout folder with ``train/`` and ``validation/``) or, when unset, phantoms synthesized on the fly.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from optimize import stages
from optimize.compile import CompileConfig
from optimize.data import PatchSet, phantom_patches
from optimize.distill import DistillConfig, NnUNetFinetune
from optimize.export_onnx import OnnxExportConfig
from optimize.fp16 import Fp16Config
from optimize.quantize import Int8Config
from optimize.runners import Runner, time_runner
from optimize.tensorrt_build import TrtBuildConfig
from optimize.validate import ParityReport, patch_accuracy
from pancreas.bundle import Artifact, Bundle, BundleMetadata, provenance
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

NETWORK_RECIPES = ("prune", "distill")


class RecipeError(PancreasError):
    code = "invalid_recipe"


@dataclass(frozen=True)
class Recipe:
    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name


@dataclass(frozen=True)
class OptimizeOptions:
    """Data sizes and per-stage options of :func:`optimize_bundle`."""

    data: Path | None = None
    calib_cases: int = 8
    calib_per_case: int = 2
    val_cases: int = 6
    val_per_case: int = 2
    train_cases: int = 12
    train_per_case: int = 4
    train_fg_fraction: float = 0.67
    train_lesion_fraction: float = 0.33
    parity_patches: int = 4
    fold: int | str | None = None
    seed: int = 0
    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    int8: Int8Config = field(default_factory=Int8Config)
    finetune: DistillConfig = field(default_factory=DistillConfig)
    nnunet: NnUNetFinetune | None = None  # fine-tune prune/distill with nnU-Net's loop (training package)
    trt: TrtBuildConfig = field(default_factory=TrtBuildConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    command: str | None = None


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


class State:
    """The working state threaded through the recipes."""

    def __init__(self, bundle: Bundle, out: Path, options: OptimizeOptions) -> None:
        from pancreas.network import load_network

        self.bundle, self.out, self.options = bundle, out, options
        torch_arts = [a for a in bundle.artifacts("torch", "fp32") if options.fold is None or a.fold == options.fold]
        if not torch_arts:
            raise RecipeError(f"bundle {bundle.root} has no fp32 torch artifact"
                              f"{'' if options.fold is None else f' for fold {options.fold}'} to optimize")
        self.source = torch_arts[0]
        import torch

        state = torch.load(bundle.path(self.source), map_location="cpu", weights_only=True)
        self.teacher = load_network(bundle.plans, bundle.metadata.network, state)
        self.net, self.config = self.teacher, bundle.metadata.network
        self.patch = [int(p) for p in (self.source.patch_size or bundle.configuration["patch_size"])]
        self.onnx: dict[str, Path] = {}
        self.artifacts: list[Artifact] = []
        self.records: list[dict[str, Any]] = []
        self._patches: dict[str, PatchSet] = {}
        self._accuracy: dict[int, dict[str, float]] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # ---- data ------------------------------------------------------------------------------------------
    def data_root(self) -> Path:
        if self.options.data is not None:
            return Path(self.options.data)
        if self._tmp is None:
            from pancreas.phantoms import SynthConfig, synthesize

            self._tmp = tempfile.TemporaryDirectory(prefix="pancreas-optimize-")
            logger.info("no --data given: synthesizing phantoms in %s", self._tmp.name)
            synthesize(Path(self._tmp.name), SynthConfig(cases_per_subtype=max(2, self.options.train_cases // 3),
                                                         splits=("train", "validation"), seed=self.options.seed))
        return Path(self._tmp.name)

    def patches(self, purpose: str) -> PatchSet:
        """``calib`` / ``train`` (training split) or ``val`` (validation split) patches, cached."""
        o = self.options
        sizes = {"calib": ("train", o.calib_cases, o.calib_per_case, 1), "train": ("train", o.train_cases,
                 o.train_per_case, 2), "val": ("validation", o.val_cases, o.val_per_case, 3)}
        if purpose not in self._patches:
            split, cases, per_case, salt = sizes[purpose]
            bias = {"fg_fraction": o.train_fg_fraction, "lesion_fraction": o.train_lesion_fraction} \
                if purpose == "train" else {}
            self._patches[purpose] = phantom_patches(self.bundle, self.data_root(), split=split, max_cases=cases,
                                                     per_case=per_case, seed=o.seed + salt, **bias)
        return self._patches[purpose]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def accuracy(self, runner: Runner) -> dict[str, float]:
        key = id(runner)
        if key not in self._accuracy:
            val = self.patches("val")
            self._accuracy[key] = patch_accuracy(runner, val.images, val.labels, val.subtypes)
        return self._accuracy[key]

    def add(self, artifact: Artifact) -> None:
        self.artifacts = [a for a in self.artifacts if a.path != artifact.path] + [artifact]

    def record(self, recipe: Recipe, precision: str, artifact: str | None, *, reference: Runner,
               candidate: Runner, reference_name: str, seconds: float, parity: ParityReport | None = None,
               **details: Any) -> dict[str, Any]:
        """Measure accuracy and latency of ``candidate`` against ``reference`` and append the record."""
        x = self.patches("val").images[:1]
        before, after = self.accuracy(reference), self.accuracy(candidate)
        lat0, lat1 = time_runner(reference, x), time_runner(candidate, x)
        rec = {"recipe": str(recipe), "precision": precision, "artifact": artifact, "reference": reference_name,
               "parity": parity.to_dict() if parity is not None else None,
               "accuracy": {"before": before, "after": after,
                            "delta": {k: round(after[k] - before[k], 5) for k in before},
                            "scope": f"{len(self.patches('val'))} held-out phantom patches"},
               "latency_ms_per_patch": {"before": round(lat0, 2), "after": round(lat1, 2),
                                        "speedup": round(lat0 / lat1, 3) if lat1 else None, "device": "cpu"},
               "seconds": round(seconds, 1), "versions": provenance("").versions, **details}
        self.records.append(rec)
        logger.info("%s: %s, accuracy delta %s, latency %.0f -> %.0f ms", recipe, precision, rec["accuracy"]["delta"],
                    lat0, lat1)
        return rec


RecipeFn = Callable[[State, Recipe], None]

#: recipe name -> stage function ``fn(state, recipe)`` (see :mod:`optimize.stages`)
RECIPES: dict[str, RecipeFn] = {"onnx": stages.onnx, "fp16": stages.fp16, "int8": stages.int8,
                                "prune": stages.prune, "distill": stages.distill, "tensorrt": stages.tensorrt,
                                "compile": stages.compile_}


def optimize_bundle(bundle: Bundle | str | Path, recipes: str | list[str], out: str | Path, *,
                    options: OptimizeOptions = OptimizeOptions()) -> Bundle:
    """Run ``recipes`` on ``bundle`` and write the optimized bundle to ``out``; returns it loaded.

    Raises:
        RecipeError: unknown/misordered recipes, ``out`` not empty, no torch artifact.
        ParityError, QuantizationError, TensorRTUnavailableError, ...: from the stages.
    """
    import torch

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    plan = parse_recipes(recipes)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RecipeError(f"output folder {out} is not empty; choose a new --out")
    (out / "models").mkdir(parents=True, exist_ok=True)
    state = State(bundle, out, options)
    try:
        for recipe in plan:
            logger.info("recipe %s", recipe)
            RECIPES[recipe.name](state, recipe)
        rel = f"models/fold_{state.source.fold if state.source.fold is not None else 0}.pt"
        torch.save(state.net.state_dict(), out / rel)
        state.artifacts.insert(0, Artifact(kind="torch", path=rel, precision="fp32", fold=state.source.fold,
                                           patch_size=state.patch))
        return _write(state, plan)
    finally:
        state.close()


def optimize_folds(bundle: Bundle | str | Path, recipes: str | list[str], out: str | Path, *,
                   options: OptimizeOptions = OptimizeOptions()) -> Bundle:
    """:func:`optimize_bundle` for every fold of a fold-ensemble bundle, merged into one bundle at ``out``.

    Each fold is optimized on its own (``out/.fold_<k>``); its files are then moved into ``out/models`` as
    ``fold_<k>_<name>`` (torch weights keep ``fold_<k>.pt``) and its stage records are tagged with the fold.
    """
    import shutil

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RecipeError(f"output folder {out} is not empty; choose a new --out")
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
                          training_data=src.training_data, provenance=provenance(state.options.command))
    return Bundle.write(state.out, meta, state.bundle.plans, state.bundle.dataset)


#: serving preference among the built artifacts: (kind, precision) -> backend
_PREFERENCE = ((("tensorrt", "int8"), "tensorrt"), (("tensorrt", "fp16"), "tensorrt"), (("tensorrt", "fp32"), "tensorrt"),
               (("onnx", "int8"), "onnxruntime"), (("onnx", "fp32"), "onnxruntime"))


def _recommended(artifacts: list[Artifact], records: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The backend/precision to serve by default (TensorRT on a GPU, else INT8/fp32 onnxruntime, else torch).

    INT8 onnxruntime is skipped when its own stage measured it slower than the fp32 model it came from
    (narrow networks on CPU: the Q/DQ overhead outweighs the int8 convolutions).
    """
    built = {(a.kind, a.precision) for a in artifacts}
    int8 = next((r for r in records or [] if r.get("recipe", "").split(":")[0] == "int8"), None)
    if int8 is not None and (int8["latency_ms_per_patch"].get("speedup") or 0) < 1.0:
        built.discard(("onnx", "int8"))
    for (kind, precision), backend in _PREFERENCE:
        if (kind, precision) in built:
            return {"backend": backend, "precision": precision}
    return {"backend": "torch", "precision": "fp32"}


def options_dict(options: OptimizeOptions) -> dict[str, Any]:
    d = asdict(options)
    d["data"] = str(options.data) if options.data else None
    if options.nnunet is not None:
        d["nnunet"]["workdir"] = str(options.nnunet.workdir)
    return d

