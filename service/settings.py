"""Service configuration: one pydantic-settings class, read from ``PANCREAS_*`` environment variables.

Every field can be set as ``PANCREAS_<FIELD>`` (e.g. ``PANCREAS_QUEUE_SIZE=4``); ``pancreas serve`` flags
override the environment. ``Settings()`` with nothing set serves the committed demo bundle on
``127.0.0.1:8000`` on the best device available (CUDA if present, otherwise CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Backend = Literal["auto", "torch", "onnxruntime", "tensorrt", "torch_export"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "fp16", "int8"]


class Settings(BaseSettings):
    """Configuration of one ``pancreas serve`` process (one model instance)."""

    model_config = SettingsConfigDict(env_prefix="PANCREAS_", extra="ignore", frozen=True,
                                      protected_namespaces=())

    #: Model bundle folder; ``None`` serves the committed demo bundle.
    bundle: Path | None = None
    backend: Backend = "auto"
    device: Device = "auto"
    precision: Precision = "fp32"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    #: Largest accepted upload (the compressed file as sent), bytes.
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    #: Largest accepted image, voxels (checked from the NIfTI header before any voxel is decoded).
    max_voxels: int = Field(default=512 * 512 * 1024, gt=0)
    #: Requests admitted at once (running + waiting for the model); more get 503 + Retry-After.
    queue_size: int = Field(default=8, ge=1)
    #: Seconds a request may take from arrival to response before it gets 504.
    request_timeout_s: float = Field(default=300.0, gt=0)
    #: Seconds uvicorn waits for in-flight requests on shutdown (SIGTERM/SIGINT).
    graceful_shutdown_s: float = Field(default=330.0, gt=0)

    batch_size: int = Field(default=2, ge=1)
    step_size: float = Field(default=0.5, gt=0, le=1)
    tta: bool = False
    coarse_to_fine: bool = False
    postprocess: bool = True
    compile: bool = False
    num_threads: int | None = Field(default=None, ge=1)
    warmup: bool = True

    #: Optional bearer token; when set, ``/v1/predict`` and ``/v1/model`` need ``Authorization: Bearer …``.
    api_key: SecretStr | None = None
    #: Folder for per-request temporary files (default: the system temp folder).
    tmp_dir: Path | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

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

    @property
    def max_decompressed_bytes(self) -> int:
        """Upper bound on a decompressed upload: ``max_voxels`` of the widest real dtype plus headers."""
        return self.max_voxels * 8 + (1 << 20)
