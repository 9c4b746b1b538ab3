"""The /v1/predict pipeline: admission -> upload -> Volume -> model -> mask file, timed per stage.

Decoding and encoding run in worker threads (``asyncio.to_thread``), the model on its own thread
(:class:`~service.worker.ModelWorker`); the event loop only streams bytes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from pancreas.engine_config import ENGINE_STAGES
from service.errors import ServiceError
from service.schemas import ModelSummary, Timings
from service.settings import Settings
from service.uploads import UploadLimits, decode_upload, receive_upload, request_workdir
from service.worker import ModelWorker

if TYPE_CHECKING:
    from pancreas.engine import Prediction


#: Stages the engine times itself (``Prediction.timings_ms``), reported as they are.


@dataclass(frozen=True)
class Served:
    """Everything a /v1/predict response carries."""

    prediction: Prediction
    mask_gz: bytes
    timings: Timings
    model: ModelSummary
    parts_ms: dict[str, dict[str, float]]  # per ensemble member / cascade stage: its engine stages and total


def model_summary(worker: ModelWorker) -> ModelSummary:
    info = worker.engine.info if worker.engine is not None else {}
    return ModelSummary(name=str(info.get("name", "")), version=str(info.get("version", "")),
                        backend=str(info.get("backend", "")), precision=str(info.get("precision", "")))


async def predict_upload(request: Request, settings: Settings, worker: ModelWorker, *,
                         started: float) -> Served:
    """Run one prediction for the multipart upload in ``request`` (``started``: perf_counter at arrival).

    Order: admission (a slot, or 503 before the body is read) -> upload -> header and voxel checks ->
    the engine's resampled-grid bound -> model -> mask in the input's own header.
    """
    deadline = time.monotonic() + min(settings.upload_timeout_s, settings.request_timeout_s)
    limits = UploadLimits(max_bytes=settings.max_upload_bytes, read_timeout_s=settings.upload_read_timeout_s,
                          deadline=deadline)
    with worker.admission() as slot, request_workdir(settings.tmp_dir) as workdir:
        raw = workdir / "upload.bin"
        await receive_upload(request, raw, limits=limits, stop=worker.draining)
        volume = await asyncio.to_thread(decode_upload, raw, workdir, max_voxels=settings.max_voxels,
                                         max_bytes=settings.max_decompressed_bytes)
        worker.check_input(volume)
        read_done = time.perf_counter()
        remaining = settings.request_timeout_s - (read_done - started)
        if remaining <= 0:
            raise ServiceError("timeout", f"the upload took longer than {settings.request_timeout_s:g} s")
        job = await worker.predict(slot, volume, timeout_s=remaining)
    predicted = time.perf_counter()
    mask_gz = await asyncio.to_thread(volume.mask_bytes, job.prediction.mask)
    encoded = time.perf_counter()
    engine_ms = {k: float(job.prediction.timings_ms.get(k, 0.0)) for k in ENGINE_STAGES}
    timings = Timings(read=(read_done - started) * 1e3, queue=job.queue_ms, **engine_ms,
                      encode=(encoded - predicted) * 1e3, total=(encoded - started) * 1e3)
    parts = {name: {k: float(v) for k, v in ms.items() if k in ENGINE_STAGES or k == "total"}
             for name, ms in job.prediction.parts_ms.items()}
    return Served(job.prediction, mask_gz, timings, model_summary(worker), parts)
