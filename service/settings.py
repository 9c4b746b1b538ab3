"""Service configuration: one pydantic-settings class, read from ``PANCREAS_*`` environment variables.

Every field can be set as ``PANCREAS_<FIELD>`` (e.g. ``PANCREAS_QUEUE_SIZE=4``); ``pancreas serve`` flags
override the environment. ``Settings()`` with nothing set serves the committed demo bundle on
``127.0.0.1:8000`` on the best device available (CUDA if present, otherwise CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pancreas.backends import DEVICES, PRECISIONS, backend_choices
from pancreas.engine_config import EngineConfig, mirror_axis_list, scale_list
from pancreas.grid import GridLimits

#: Engine defaults: every inference field below takes its default from here, and :meth:`Settings.engine_config`
#: passes the fields both classes share straight through.
_ENGINE = EngineConfig()
#: the multi-valued TTA settings and the parser of their text form (the command line's)
_TTA_PARSERS = {"scales": scale_list, "mirror_axes": mirror_axis_list}


class Settings(BaseSettings):
    """Configuration of one ``pancreas serve`` process (one model instance)."""

    model_config = SettingsConfigDict(env_prefix="PANCREAS_", extra="ignore", frozen=True,
                                      protected_namespaces=())

    #: Model bundle folder; ``None`` serves the committed demo bundle.
    bundle: Path | None = None
    backend: str = _ENGINE.backend
    device: str = _ENGINE.device
    precision: str = _ENGINE.precision
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    #: Largest accepted upload (the compressed file as sent), bytes.
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    #: Largest accepted image, voxels (checked from the NIfTI header before any voxel is decoded).
    max_voxels: int = Field(default=512 * 512 * 1024, gt=0)
    #: Largest grid the model runs on: the image resampled to the bundle's spacing, voxels.
    max_resampled_voxels: int = Field(default=GridLimits.max_voxels, gt=0)
    #: Largest resampled / input voxel ratio once the resampled grid exceeds 128^3 voxels.
    max_upsampling: float = Field(default=GridLimits.max_upsampling, gt=0)
    #: Requests admitted at once (uploading, waiting or running); the next gets 503 before its body is read.
    queue_size: int = Field(default=8, ge=1)
    #: Seconds a request may take from arrival to response before it gets 504.
    request_timeout_s: float = Field(default=300.0, gt=0)
    #: Seconds the whole upload may take (also bounded by ``request_timeout_s``); then 408.
    upload_timeout_s: float = Field(default=120.0, gt=0)
    #: Seconds without a byte of the upload arriving; then 408.
    upload_read_timeout_s: float = Field(default=15.0, gt=0)
    #: Seconds uvicorn waits for in-flight requests on shutdown (SIGTERM/SIGINT).
    graceful_shutdown_s: float = Field(default=330.0, gt=0)

    batch_size: int = Field(default=_ENGINE.batch_size, ge=1)
    step_size: float = Field(default=_ENGINE.step_size, gt=0, le=1)
    #: Mirroring test-time augmentation; None (``PANCREAS_TTA=auto``) follows the bundle's ``metadata.inference["tta"]``.
    tta: bool | None = _ENGINE.tta
    #: Multi-scale TTA, target-spacing factors (``PANCREAS_SCALES=1,1.25``); None (``auto``) follows the bundle's
    #: ``metadata.inference["scales"]``; ``1`` runs the plans' grid only.
    scales: tuple[float, ...] | None = _ENGINE.scales
    #: The network-input axes mirroring TTA flips (``PANCREAS_MIRROR_AXES=2``: 2 passes per patch instead of 8);
    #: None (``auto``) follows the bundle's ``metadata.inference["mirror_axes"]`` (all axes when unset).
    mirror_axes: tuple[int, ...] | None = _ENGINE.mirror_axes
    coarse_to_fine: bool = _ENGINE.coarse_to_fine
    postprocess: bool = _ENGINE.postprocess
    compile: bool = _ENGINE.compile
    num_threads: int | None = Field(default=_ENGINE.num_threads, ge=1)
    warmup: bool = True

    #: Optional bearer token; when set, ``/v1/predict`` and ``/v1/model`` need ``Authorization: Bearer …``.
    api_key: SecretStr | None = None
    #: Folder for per-request temporary files (default: the system temp folder).
    tmp_dir: Path | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("backend", "device", "precision")
    @classmethod
    def _known_choice(cls, value: str, info: ValidationInfo) -> str:
        choices = {"backend": backend_choices(), "device": DEVICES, "precision": PRECISIONS}[info.field_name]
        if value not in choices:
            raise ValueError(f"{info.field_name} {value!r} is not one of {', '.join(choices)}")
        return value

    @field_validator("tta", mode="before")
    @classmethod
    def _auto_tta_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value

    @field_validator("scales", "mirror_axes", mode="before")
    @classmethod
    def _tta_from_text(cls, value: object, info: ValidationInfo) -> object:
        """``auto`` / empty: the bundle decides; else the command-line form (``1,1.25``, ``[1, 2]``, ``2``)."""
        parse = _TTA_PARSERS[info.field_name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return parse(str(value))
        if isinstance(value, (list, tuple)):
            return parse(",".join(str(v) for v in value))
        if not isinstance(value, str):
            return value
        return None if value.strip().lower() in ("", "auto") else parse(value.strip().strip("[]()"))

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is not None and not value.get_secret_value() else value

    def bundle_path(self) -> Path:
        """The bundle folder to serve (the demo bundle when none is configured)."""
        if self.bundle is not None:
            return self.bundle
        from pancreas.bundle import default_bundle_path

        return default_bundle_path()

    def engine_config(self) -> EngineConfig:
        """The engine options: every field shared with :class:`EngineConfig`, plus the resampled-grid bound."""
        shared = {f.name for f in dataclasses.fields(EngineConfig)} & set(type(self).model_fields)
        return EngineConfig(**{name: getattr(self, name) for name in shared}, grid_limits=self.grid_limits)

    @property
    def grid_limits(self) -> GridLimits:
        """The resampled-grid bound, shared by the engine and the upload checks."""
        return GridLimits(max_voxels=self.max_resampled_voxels, max_upsampling=self.max_upsampling)

    @property
    def max_decompressed_bytes(self) -> int:
        """Upper bound on a decompressed upload: ``max_voxels`` of the widest real dtype plus headers."""
        return self.max_voxels * 8 + (1 << 20)
