"""The model bundle: the one contract between training, optimize, the service and the benchmarks.

A bundle is a folder::

    BUNDLE/
      configs/metadata.json   BundleMetadata (schema_version, labels, network, artifacts, metrics, provenance)
      configs/plans.json      nnU-Net plans (unchanged from nnunetv2)
      configs/dataset.json    nnU-Net dataset.json
      models/...              artifacts listed in metadata.artifacts (torch state dicts, ONNX, engines)

:class:`Bundle` loads and validates it; anything malformed raises :class:`~pancreas.errors.BundleError`
whose message names the file and the fix. Nothing else in the project passes loose weight paths around.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import shlex
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pancreas import LABELS, SUBTYPES
from pancreas.errors import BundleError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
METADATA = "configs/metadata.json"
PLANS = "configs/plans.json"
DATASET = "configs/dataset.json"

ArtifactKind = Literal["torch", "onnx", "tensorrt", "torch_export"]
Precision = Literal["fp32", "fp16", "int8", "bf16"]

_TRACKED_PACKAGES = ("pancreas-mtl", "torch", "nnunetv2", "dynamic-network-architectures", "onnx",
                     "onnxruntime", "SimpleITK", "numpy", "tensorrt", "torch-pruning")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class HeadConfig(_Model):
    """Classification head. ``variant``: gap | multiscale | attention | mask."""

    variant: str = "mask"
    hidden: int = 64
    dropout: float = 0.2
    num_queries: int = 4
    stages: list[int] | None = None  # encoder stages fused by the multiscale/attention heads (None: last 3)


class NetworkConfig(_Model):
    """Everything needed, with the plans, to rebuild the network."""

    configuration: str = "3d_fullres"
    input_channels: int = 1
    num_seg_classes: int = 3
    num_cls_classes: int = 3
    head: HeadConfig = Field(default_factory=HeadConfig)
    #: Overrides applied on top of the plans' ``architecture.arch_kwargs`` (pruning/distillation
    #: change feature widths); empty for a plain nnU-Net-planned network.
    arch_kwargs_override: dict[str, Any] = Field(default_factory=dict)


class Artifact(_Model):
    """One servable file of the bundle, path relative to the bundle root."""

    kind: ArtifactKind
    path: str
    precision: Precision = "fp32"
    fold: int | str | None = None
    sha256: str | None = None
    patch_size: list[int] | None = None
    info: dict[str, Any] = Field(default_factory=dict)


class Provenance(_Model):
    created: str
    command: str
    git_sha: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    host: str = ""


class BundleMetadata(_Model):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str = "0.1.0"
    description: str = ""
    labels: dict[str, int] = Field(default_factory=lambda: dict(LABELS))
    subtypes: list[int] = Field(default_factory=lambda: list(SUBTYPES))
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    artifacts: list[Artifact]
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: One record per optimize stage (recipe, precision built, parity, accuracy and latency deltas).
    optimization: list[dict[str, Any]] = Field(default_factory=list)
    #: Inference defaults recorded by training (postprocessing on/off, step size, ...).
    inference: dict[str, Any] = Field(default_factory=dict)
    #: What the model was trained and validated on: ``sources`` (case counts per source, e.g. real/phantom),
    #: ``tasks`` (per task: trained on / validated on), ``licence`` note, and ``domain`` (the input ranges
    #: seen in training, read by :mod:`pancreas.domain` to warn about unlike inputs).
    training_data: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance


def provenance(command: str | list[str] | None = None) -> Provenance:
    """Record versions, git sha, host and the command that is running now."""
    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    versions = {"python": platform.python_version()}
    for pkg in _TRACKED_PACKAGES:
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            continue
    return Provenance(created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      command=command, git_sha=_git_sha(), versions=versions, host=platform.node())


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing; re-export the bundle with `pancreas export-bundle`",
                          code="bundle_incomplete")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle file {path} is not valid JSON ({exc})", code="bundle_corrupt") from exc
    if not isinstance(data, dict):
        raise BundleError(f"bundle file {path} must hold a JSON object", code="bundle_corrupt")
    return data


class Bundle:
    """A validated model bundle folder. Use :meth:`load`; construct new ones with :meth:`write`."""

    def __init__(self, root: Path, metadata: BundleMetadata, plans: dict[str, Any], dataset: dict[str, Any]):
        self.root = root
        self.metadata = metadata
        self.plans = plans
        self.dataset = dataset

    # ---- reading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path, *, verify_checksums: bool = True) -> Bundle:
        """Load and validate a bundle; raise BundleError naming the bad file and the fix."""
        root = Path(root)
        if not root.is_dir():
            raise BundleError(f"model bundle {root} is not a folder", code="bundle_missing")
        raw = _read_json(root / METADATA)
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{root / METADATA}: schema_version {version!r} is not supported "
                              f"(this pancreas-mtl reads {SCHEMA_VERSION})", code="bundle_version")
        try:
            meta = BundleMetadata.model_validate(raw)
        except ValidationError as exc:
            raise BundleError(f"{root / METADATA} is malformed: {_short(exc)}", code="bundle_corrupt") from exc
        plans, dataset = _read_json(root / PLANS), _read_json(root / DATASET)
        if meta.network.configuration not in plans.get("configurations", {}):
            raise BundleError(f"{root / PLANS} has no configuration {meta.network.configuration!r}",
                              code="bundle_corrupt")
        bundle = cls(root, meta, plans, dataset)
        bundle._check_artifacts(verify_checksums)
        return bundle

    def _check_artifacts(self, verify: bool) -> None:
        if not self.metadata.artifacts:
            raise BundleError(f"{self.root / METADATA} lists no artifacts", code="bundle_incomplete")
        for art in self.metadata.artifacts:
            path = self.path(art)
            if not path.is_file() or path.stat().st_size == 0:
                raise BundleError(f"bundle artifact {path} is missing or empty", code="bundle_incomplete")
            if verify and art.sha256 and sha256_of(path) != art.sha256:
                raise BundleError(f"bundle artifact {path} does not match its recorded sha256; "
                                  "the file is corrupt or was replaced", code="bundle_corrupt")

    def path(self, artifact: Artifact) -> Path:
        resolved = (self.root / artifact.path).resolve()
        if self.root.resolve() not in resolved.parents:
            raise BundleError(f"artifact path {artifact.path!r} escapes the bundle folder", code="bundle_corrupt")
        return resolved

    def artifacts(self, kind: ArtifactKind | None = None, precision: Precision | None = None) -> list[Artifact]:
        return [a for a in self.metadata.artifacts
                if (kind is None or a.kind == kind) and (precision is None or a.precision == precision)]

    @property
    def configuration(self) -> dict[str, Any]:
        """The plans' entry for the bundle's configuration (patch size, spacing, architecture ...)."""
        return self.plans["configurations"][self.metadata.network.configuration]

    # ---- writing -------------------------------------------------------------------------------------
    @classmethod
    def write(cls, root: str | Path, metadata: BundleMetadata, plans: dict[str, Any],
              dataset: dict[str, Any]) -> Bundle:
        """Write configs (artifacts must already be under ``root``), fill checksums, validate by loading."""
        root = Path(root)
        (root / "configs").mkdir(parents=True, exist_ok=True)
        for art in metadata.artifacts:
            path = root / art.path
            if path.is_file() and art.sha256 is None:
                art.sha256 = sha256_of(path)
        (root / PLANS).write_text(json.dumps(plans, indent=2))
        (root / DATASET).write_text(json.dumps(dataset, indent=2))
        (root / METADATA).write_text(metadata.model_dump_json(indent=2))
        logger.info("wrote bundle %s (%d artifacts)", root, len(metadata.artifacts))
        return cls.load(root)


def _short(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs[:5]]
    return "; ".join(parts) + (f" (+{len(errs) - 5} more)" if len(errs) > 5 else "")


def default_bundle_path() -> Path:
    """The demo bundle shipped inside the package."""
    return Path(__file__).parent / "demo_bundle"
