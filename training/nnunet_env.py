"""nnU-Net's three folders, set once at the CLI entry point.

nnunetv2 2.8 reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` lazily: ``nnunetv2.paths``
holds ``_EnvPath`` objects that look the environment variable up on every use, so modules that did
``from nnunetv2.paths import nnUNet_preprocessed`` at import time (planner, preprocessor, trainer,
data loader) see the value set here even when they were imported earlier. Older nnunetv2 releases
bound plain strings at import time; for those :func:`configure` also rebinds the module attributes of
the already-imported modules that matter for planning and training.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pancreas.errors import DatasetError

logger = logging.getLogger(__name__)

_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: modules that bind the paths with ``from nnunetv2.paths import ...`` (only rebound if they hold strings)
_BINDING_MODULES = (
    "nnunetv2.paths",
    "nnunetv2.experiment_planning.plan_and_preprocess_api",
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
    "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner",
    "nnunetv2.preprocessing.preprocessors.default_preprocessor",
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnunetv2.training.dataloading.data_loader",
    "nnunetv2.utilities.dataset_name_id_conversion",
    "nnunetv2.utilities.utils",
)
_DATASET_RE = re.compile(r"^Dataset(\d{3})_\w+$")


@dataclass(frozen=True)
class NnUNetPaths:
    """The work root and nnU-Net's sub-folders."""

    root: Path
    raw: Path
    preprocessed: Path
    results: Path


def configure(workdir: str | Path) -> NnUNetPaths:
    """Create ``WORKDIR/{nnUNet_raw,nnUNet_preprocessed,nnUNet_results}`` and point nnU-Net at them."""
    root = Path(workdir).expanduser().resolve()
    paths = NnUNetPaths(root, root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results")
    for var, folder in zip(_VARS, (paths.raw, paths.preprocessed, paths.results)):
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(folder)
        for name in _BINDING_MODULES:
            module = sys.modules.get(name)
            if module is not None and isinstance(getattr(module, var, None), str):
                setattr(module, var, str(folder))
    logger.debug("nnU-Net folders under %s", root)
    return paths


def current() -> NnUNetPaths:
    """The folders configured by :func:`configure` (raises if it was not called)."""
    missing = [v for v in _VARS if not os.environ.get(v)]
    if missing:
        raise DatasetError(f"nnU-Net folders are not configured ({', '.join(missing)} unset); "
                           "call training.nnunet_env.configure(workdir) or pass --workdir")
    raw = Path(os.environ["nnUNet_raw"])
    return NnUNetPaths(raw.parent, raw, Path(os.environ["nnUNet_preprocessed"]), Path(os.environ["nnUNet_results"]))


def resolve_dataset(spec: str | int, paths: NnUNetPaths | None = None) -> str:
    """``501``, ``"501"``, ``"Dataset501_Phantoms"`` or a raw dataset folder -> ``"Dataset501_Phantoms"``."""
    paths = paths or current()
    text = str(spec)
    as_path = Path(text)
    if as_path.is_dir() and _DATASET_RE.match(as_path.name):
        return as_path.name
    if _DATASET_RE.match(text):
        return text
    if text.isdigit():
        wanted = f"Dataset{int(text):03d}_"
        for base in (paths.raw, paths.preprocessed, paths.results):
            hits = sorted(p.name for p in base.glob(wanted + "*") if p.is_dir()) if base.is_dir() else []
            if hits:
                return hits[0]
        raise DatasetError(f"no dataset with id {text} under {paths.raw} or {paths.preprocessed}; "
                           "run `pancreas convert` first or check --workdir")
    raise DatasetError(f"dataset {spec!r} is neither an id (e.g. 501), a name (Dataset501_Name) nor a raw "
                       "dataset folder")


def dataset_workdir(folder: str | Path) -> Path | None:
    """The work root implied by a raw dataset folder ``ROOT/nnUNet_raw/DatasetXXX_Name`` (else None)."""
    folder = Path(folder).expanduser().resolve()
    if folder.is_dir() and _DATASET_RE.match(folder.name) and folder.parent.name == "nnUNet_raw":
        return folder.parent.parent
    return None
