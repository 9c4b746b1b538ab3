"""The model bundle: the one contract between training, optimize, the service and the benchmarks.

A bundle is a folder::

    BUNDLE/
      configs/metadata.json   BundleMetadata (schema_version, labels, network, artifacts, metrics, provenance)
      configs/plans.json      nnU-Net plans (unchanged from nnunetv2)
      configs/dataset.json    nnU-Net dataset.json
      models/...              artifacts listed in metadata.artifacts (torch state dicts, ONNX, engines)

An *ensemble bundle* (over configurations, e.g. 3d_fullres + 2d) lists complete member bundles in
``metadata.members`` (folders relative to its root, conventionally ``members/<name>/``) and has no artifacts of
its own; its plans and dataset.json are its first member's (label handling only). Every member is loaded and
validated with the ensemble; :func:`write_ensemble` copies members in and writes one.

A *cascade bundle* (nnU-Net's ``3d_cascade_fullres``) is the full-res stage's bundle (its network takes the CT
plus one channel per foreground label) holding the low-res stage as a complete nested bundle, conventionally
``stages/3d_lowres/``, named by ``metadata.previous_stage``; its configuration must be the plans'
``previous_stage`` of the bundle's configuration, and the nested bundle is loaded and validated with it.

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
import shutil
import subprocess
import sys
from collections.abc import Mapping
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


def input_channels_of(net: Any) -> int:
    """Input channels of a :class:`MultiTaskUNet` (``config.input_channels``: 1 CT, +1 per foreground label for a
    cascade stage); 1 for a module without a config."""
    config = getattr(net, "config", None)
    return int(config.input_channels) if isinstance(config, NetworkConfig) else 1


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
    #: Inference defaults recorded by training and optimize: ``tta`` (mirroring on by default), ``class_weights``
    #: (factors before the argmax), ``postprocess`` (on/off), ``postprocessing``
    #: (:class:`pancreas.postprocess.PostprocessConfig` options), ``recommended``.
    inference: dict[str, Any] = Field(default_factory=dict)
    #: What the model was trained and validated on: ``sources`` (case counts per source, e.g. real/phantom),
    #: ``tasks`` (per task: trained on / validated on), ``licence`` note, and ``domain`` (the input ranges
    #: seen in training, read by :mod:`pancreas.domain` to warn about unlike inputs).
    training_data: dict[str, Any] = Field(default_factory=dict)
    #: An ensemble over configurations: member bundle folders relative to this bundle's root (empty: a plain
    #: bundle). The member name is the folder's last part.
    members: list[str] = Field(default_factory=list)
    #: A cascade's previous stage: the nested bundle folder relative to this bundle's root (None: no cascade).
    previous_stage: str | None = None
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
        #: ensemble members by name (see ``metadata.members``), each loaded and validated; empty for a plain bundle
        self.members: dict[str, Bundle] = {}
        #: a cascade's previous stage (``metadata.previous_stage``), loaded and validated; None otherwise
        self.previous_stage: Bundle | None = None

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
        bundle.members = bundle._load_members(verify_checksums)
        # an ensemble has no stage of its own (its network and plans are its first member's, perhaps a cascade's)
        bundle.previous_stage = None if bundle.members else bundle._load_previous_stage(verify_checksums)
        return bundle

    def _check_artifacts(self, verify: bool) -> None:
        if self.metadata.members and self.metadata.artifacts:
            raise BundleError(f"{self.root / METADATA} lists both members and artifacts; an ensemble bundle has no "
                              "artifacts of its own (its members hold them)", code="bundle_corrupt")
        if not self.metadata.artifacts and not self.metadata.members:
            raise BundleError(f"{self.root / METADATA} lists no artifacts", code="bundle_incomplete")
        for art in self.metadata.artifacts:
            path = self.path(art)
            if not path.is_file() or path.stat().st_size == 0:
                raise BundleError(f"bundle artifact {path} is missing or empty", code="bundle_incomplete")
            if verify and art.sha256 and sha256_of(path) != art.sha256:
                raise BundleError(f"bundle artifact {path} does not match its recorded sha256; "
                                  "the file is corrupt or was replaced", code="bundle_corrupt")

    def _load_members(self, verify: bool) -> dict[str, Bundle]:
        """Load each listed member (recursively); refuse escaping, missing or mismatched ones."""
        where = self.root / METADATA
        if self.metadata.members and self.metadata.previous_stage is not None:
            raise BundleError(f"{where} lists both members and a previous_stage; an ensemble's cascade members "
                              "hold their own previous stages", code="bundle_corrupt")
        if len(self.metadata.members) == 1:
            raise BundleError(f"{where} lists one member; an ensemble needs at least two (serve that member's "
                              "bundle itself instead)", code="bundle_corrupt")
        members: dict[str, Bundle] = {}
        for rel in self.metadata.members:
            folder = self._member_folder(rel)
            if folder.name in members:
                raise BundleError(f"{where}: two members are named {folder.name!r}; member folder names must be "
                                  "unique", code="bundle_corrupt")
            try:
                member = Bundle.load(folder, verify_checksums=verify)
            except BundleError as exc:
                raise BundleError(f"ensemble {self.root}: member {rel!r} is not a valid bundle: {exc}",
                                  code=exc.code) from exc
            mine, theirs = self.metadata, member.metadata
            if (theirs.labels, theirs.subtypes) != (mine.labels, mine.subtypes):
                raise BundleError(f"ensemble {self.root}: member {rel!r} has labels {theirs.labels} and subtypes "
                                  f"{theirs.subtypes}, the ensemble {mine.labels} and {mine.subtypes}; only models "
                                  "of the same task can be averaged", code="bundle_corrupt")
            members[folder.name] = member
        return members

    def _member_folder(self, rel: str) -> Path:
        try:
            root, folder = self.root.resolve(), (self.root / rel).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise BundleError(f"ensemble member {rel!r} of {self.root} cannot be resolved ({exc})",
                              code="bundle_corrupt") from exc
        if not rel or Path(rel).is_absolute() or root not in folder.parents:
            raise BundleError(f"ensemble member {rel!r} escapes the bundle folder {self.root}; members are "
                              "folders inside it (e.g. members/3d_fullres)", code="bundle_corrupt")
        if not folder.is_dir():
            raise BundleError(f"ensemble member {rel!r} of {self.root} is missing (no folder {folder})",
                              code="bundle_incomplete")
        return folder

    def _load_previous_stage(self, verify: bool) -> Bundle | None:
        """A cascade's nested previous-stage bundle; refuse a missing, escaping or mismatched one."""
        where, rel = self.root / METADATA, self.metadata.previous_stage
        name = self.metadata.network.configuration
        wanted = self.plans["configurations"][name].get("previous_stage")
        if rel is None and wanted is None:
            return None
        fix = "re-export the cascade with `pancreas export-bundle --config " + name + "`"
        if rel is None:
            raise BundleError(f"{where}: configuration {name!r} is a cascade stage (its plans' previous_stage is "
                              f"{wanted!r}) but the bundle names no previous_stage bundle; {fix}",
                              code="bundle_incomplete")
        if wanted is None:
            raise BundleError(f"{where}: previous_stage {rel!r} is set but configuration {name!r} of {self.root / PLANS}"
                              " has no previous stage", code="bundle_corrupt")
        folder = (self.root / rel).resolve()
        if Path(rel).is_absolute() or self.root.resolve() not in folder.parents:
            raise BundleError(f"{where}: previous_stage {rel!r} escapes the bundle folder; it is a folder inside it "
                              f"(e.g. stages/{wanted})", code="bundle_corrupt")
        if not folder.is_dir():
            raise BundleError(f"cascade {self.root}: previous stage {rel!r} is missing (no folder {folder}); {fix}",
                              code="bundle_incomplete")
        try:
            stage = Bundle.load(folder, verify_checksums=verify)
        except BundleError as exc:
            raise BundleError(f"cascade {self.root}: previous stage {rel!r} is not a valid bundle: {exc}",
                              code=exc.code) from exc
        if stage.metadata.network.configuration != wanted:
            raise BundleError(f"cascade {self.root}: previous stage {rel!r} is configuration "
                              f"{stage.metadata.network.configuration!r}, but the plans' previous_stage of {name!r} "
                              f"is {wanted!r}; {fix}", code="bundle_corrupt")
        channels = input_channels(self.plans, name, self.metadata.labels)
        if self.metadata.network.input_channels != channels:
            raise BundleError(f"{where}: a cascade stage takes {channels} input channels (CT + one per foreground "
                              f"label), network.input_channels is {self.metadata.network.input_channels}",
                              code="bundle_corrupt")
        return stage

    @property
    def is_ensemble(self) -> bool:
        """Whether this bundle is an ensemble over member bundles (``metadata.members``)."""
        return bool(self.metadata.members)

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
        """The plans' entry for the bundle's configuration (patch size, spacing, architecture ...), with
        ``inherits_from`` resolved (a cascade stage inherits ``3d_fullres``)."""
        return resolve_configuration(self.plans, self.metadata.network.configuration)

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


def write_ensemble(root: str | Path, members: Mapping[str, Bundle], *, name: str, description: str = "",
                   metrics: dict[str, Any] | None = None, command: str | list[str] | None = None) -> Bundle:
    """Copy ``members`` (name -> bundle) to ``root/members/<name>/`` and write the ensemble bundle around them.

    The top-level plans, dataset.json, network, inference options and training data are the first member's.
    """
    root = Path(root)
    if len(members) < 2:
        raise BundleError(f"an ensemble needs at least two members, got {list(members)}", code="bundle_corrupt")
    if root.exists() and any(root.iterdir()):
        raise BundleError(f"ensemble folder {root} is not empty; choose a new one", code="bundle_exists")
    for member_name, member in members.items():
        if not member_name or Path(member_name).name != member_name or member_name in (".", ".."):
            raise BundleError(f"ensemble member name {member_name!r} must be a plain folder name",
                              code="bundle_corrupt")
        shutil.copytree(member.root, root / "members" / member_name)
    first = next(iter(members.values()))
    meta = BundleMetadata(name=name, description=description, labels=dict(first.metadata.labels),
                          subtypes=list(first.metadata.subtypes), network=first.metadata.network.model_copy(deep=True),
                          artifacts=[], metrics=dict(metrics or {}), inference=dict(first.metadata.inference),
                          training_data=dict(first.metadata.training_data),
                          members=[f"members/{m}" for m in members], provenance=provenance(command))
    return Bundle.write(root, meta, first.plans, first.dataset)


def resolve_configuration(plans: dict[str, Any], configuration: str, _depth: int = 0) -> dict[str, Any]:
    """The plans' entry for ``configuration`` with nnU-Net's ``inherits_from`` applied (parent first, then the
    entry's own keys, as ``PlansManager.get_configuration`` does)."""
    entry = dict(plans["configurations"][configuration])
    parent = entry.pop("inherits_from", None)
    if parent is None:
        return entry
    if _depth > 8 or parent not in plans["configurations"]:
        raise BundleError(f"configuration {configuration!r} inherits from {parent!r}, which the plans lack (or "
                          "the inheritance loops)", code="bundle_corrupt")
    return {**resolve_configuration(plans, parent, _depth + 1), **entry}


def input_channels(plans: dict[str, Any], configuration: str, labels: Mapping[str, int] = LABELS) -> int:
    """Network input channels of ``configuration``: the CT, plus one per foreground label for a cascade stage
    (one with a ``previous_stage``), as nnU-Net's ``determine_num_input_channels`` counts them."""
    stage = plans.get("configurations", {}).get(configuration, {})
    return 1 + (sum(1 for v in labels.values() if v > 0) if stage.get("previous_stage") else 0)


def _short(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs[:5]]
    return "; ".join(parts) + (f" (+{len(errs) - 5} more)" if len(errs) > 5 else "")


def default_bundle_path() -> Path:
    """The demo bundle shipped inside the package."""
    return Path(__file__).parent / "demo_bundle"
