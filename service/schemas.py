"""Response models of the HTTP API (see ``docs`` in the OpenAPI page at ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from pancreas.domain import WARNING_CODES


class ErrorDetail(BaseModel):
    """The ``detail`` of every error response: a stable machine ``code`` and a human ``message``."""

    code: str = Field(examples=["not_nifti"])
    message: str


class ErrorResponse(BaseModel):
    detail: ErrorDetail


class VolumesMl(BaseModel):
    pancreas: float = Field(description="pancreas (label 1) plus lesion (label 2) volume, mL")
    lesion: float = Field(description="lesion (label 2) volume, mL")


class Timings(BaseModel):
    """Wall-clock milliseconds per stage; ``total`` covers the request from arrival to encoded mask."""

    read: float = Field(description="receive, decompress, check and canonicalize the upload")
    queue: float = Field(default=0.0, description="wait for the model (other requests ahead)")
    coarse: float = Field(default=0.0, description="coarse-to-fine ROI pass (0 when disabled)")
    preprocess: float = Field(description="nnU-Net preprocessing: crop, resample, normalize")
    inference: float = Field(description="sliding-window network passes")
    resample_back: float = Field(default=0.0, description="logits back to the input resolution")
    export: float = Field(default=0.0, description="argmax and paste into the full canonical grid")
    postprocess: float = Field(description="connected-component post-processing")
    encode: float = Field(description="write the mask back on the input grid as .nii.gz")
    total: float


class ModelSummary(BaseModel):
    name: str
    version: str
    backend: str
    precision: str


class MemberInfo(BaseModel):
    """One member of an ensemble bundle (a model of one configuration, e.g. ``3d_fullres`` or ``2d``)."""

    name: str = Field(description="the member's folder name in the ensemble bundle (members/<name>/)")
    configuration: str
    bundle: str = Field(description="the member bundle's metadata name")
    version: str
    backend: str
    precision: str
    device: str
    patch_size: list[int] | None = None
    folds: int


class InputWarningOut(BaseModel):
    """A reason the result may be wrong: the input or the prediction is unlike the model's training data."""

    code: str = Field(examples=["fov"], description="stable code: " + "; ".join(
        f"`{code}`: {meaning}" for code, meaning in WARNING_CODES.items()))
    message: str = Field(description="for a person: the measured value, the training range and what to do")


class PredictResponse(BaseModel):
    subtype: int = Field(description="predicted lesion subtype, one of 0, 1, 2")
    probabilities: list[float] = Field(description="softmax probability of each subtype")
    volumes_ml: VolumesMl
    timings_ms: Timings
    parts_ms: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="an ensemble's (or cascade's) parts: each part's own engine stage "
        "timings (ms, with its `total`), keyed by part name; `timings_ms` holds their sums. Empty for a single "
        "model")
    model: ModelSummary
    warnings: list[InputWarningOut] = Field(
        default_factory=list, description="empty when the input looks like the training data; otherwise one "
        "entry per problem (e.g. `fov`: a whole-abdomen CT sent to a model trained on pancreas crops). The "
        "prediction is still returned; treat it with the caution the message gives")
    mask_encoding: Literal["nifti-gzip-base64"] = "nifti-gzip-base64"
    mask: str = Field(description="base64 of the .nii.gz mask (0 background, 1 pancreas, 2 lesion) on exactly "
                                  "the input's size, spacing, origin and direction")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["loading", "ready", "failed", "stopped"]
    detail: str | None = None


class ModelInfo(BaseModel):
    """The served bundle's metadata plus what the engine actually runs."""

    name: str
    version: str
    description: str
    backend: str
    precision: str
    device: str
    patch_size: list[int] | None = None
    engine: dict[str, Any] = Field(description="the engine's own description (engine.info)")
    members: list[MemberInfo] = Field(
        default_factory=list, description="an ensemble bundle's members, averaged on the input grid; empty for a "
        "single model")
    training_data: dict[str, Any] = Field(
        default_factory=dict, description="what the model was trained and validated on "
        "(metadata.training_data): case counts per source, tasks, licence note, and `domain`, the input "
        "ranges (spacing, field of view, pancreas volume; per axis in z,y,x order) behind the `warnings` "
        "of /v1/predict")
    metadata: dict[str, Any] = Field(description="the bundle's configs/metadata.json")
