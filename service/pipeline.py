"""The /v1/predict pipeline: upload -> Volume -> model -> mask file, timed per stage.

Decoding and encoding run in worker threads (``asyncio.to_thread``), the model on its own thread
(:class:`~service.worker.ModelWorker`); the event loop only streams bytes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from starlette.requests import Request

from service.errors import ServiceError
from service.schemas import ModelSummary, Timings
from service.settings import Settings
from service.uploads import decode_upload, receive_upload, request_workdir
from service.worker import ModelWorker

if TYPE_CHECKING:
    from pancreas.engine import Prediction
    from pancreas.nifti import Volume


#: Stages the engine times itself (``Prediction.timings_ms``), reported as they are.
ENGINE_STAGES = ("coarse", "preprocess", "inference", "resample_back", "export", "postprocess")


@dataclass(frozen=True)
class Served:
    """Everything a /v1/predict response carries."""

    prediction: Prediction
    mask_gz: bytes
    timings: Timings
    model: ModelSummary


def encode_mask(volume: Volume, mask: np.ndarray, workdir: Path) -> bytes:
    """The canonical mask written on exactly the input's grid, as ``.nii.gz`` bytes."""
    path = workdir / "mask.nii.gz"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.Execute(volume.to_image(np.asarray(mask, dtype=np.uint8)))
    return path.read_bytes()


def model_summary(worker: ModelWorker) -> ModelSummary:
    info = worker.engine.info if worker.engine is not None else {}
    return ModelSummary(name=str(info.get("name", "")), version=str(info.get("version", "")),
                        backend=str(info.get("backend", "")), precision=str(info.get("precision", "")))


async def predict_upload(request: Request, settings: Settings, worker: ModelWorker, *,
                         started: float) -> Served:
    """Run one prediction for the multipart upload in ``request`` (``started``: perf_counter at arrival)."""
    worker.check_ready()
    worker.check_capacity()  # refuse early, before the upload is read
    with request_workdir(settings.tmp_dir) as workdir:
        raw = workdir / "upload.bin"
        await receive_upload(request, raw, max_bytes=settings.max_upload_bytes)
        volume = await asyncio.to_thread(decode_upload, raw, workdir, max_voxels=settings.max_voxels,
                                         max_bytes=settings.max_decompressed_bytes)
        read_done = time.perf_counter()
        remaining = settings.request_timeout_s - (read_done - started)
        if remaining <= 0:
            raise ServiceError("timeout", f"the upload took longer than {settings.request_timeout_s:g} s")
        job = await worker.predict(volume, timeout_s=remaining)
        predicted = time.perf_counter()
        mask_gz = await asyncio.to_thread(encode_mask, volume, job.prediction.mask, workdir)
    encoded = time.perf_counter()
    engine_ms = {k: float(job.prediction.timings_ms.get(k, 0.0)) for k in ENGINE_STAGES}
    timings = Timings(read=(read_done - started) * 1e3, queue=job.queue_ms, **engine_ms,
                      encode=(encoded - predicted) * 1e3, total=(encoded - started) * 1e3)
    return Served(job.prediction, mask_gz, timings, model_summary(worker))
