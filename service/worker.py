"""One model instance behind a bounded queue.

The engine lives on a single dedicated thread (``ThreadPoolExecutor(max_workers=1)``): requests run one
after the other, never concurrently on the model. Admission is bounded: at most ``queue_size``
requests are admitted (running + waiting); the next one gets :class:`ServiceError` ``queue_full``
(HTTP 503 with ``Retry-After``). A slot is freed when the model has *finished* the job, even if the
request timed out meanwhile, so a slow model cannot be flooded by retries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from service.errors import ServiceError
from service.settings import Settings

if TYPE_CHECKING:
    from pancreas.bundle import Bundle
    from pancreas.engine import Engine, Prediction
    from pancreas.nifti import Volume

logger = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "stopped"]


@dataclass(frozen=True)
class Job:
    """A finished prediction and how long it waited for the model and ran on it."""

    prediction: Prediction
    queue_ms: float
    run_ms: float


def build_engine(settings: Settings, bundle: Bundle) -> Engine:
    """An :class:`~pancreas.engine.Engine` for ``bundle`` configured from ``settings``."""
    from pancreas.engine import Engine, EngineConfig

    config = EngineConfig(backend=settings.backend, device=settings.device, precision=settings.precision,
                          batch_size=settings.batch_size, step_size=settings.step_size, tta=settings.tta,
                          coarse_to_fine=settings.coarse_to_fine, postprocess=settings.postprocess,
                          compile=settings.compile, num_threads=settings.num_threads)
    return Engine.from_bundle(bundle, config)


class ModelWorker:
    """The single engine, its thread, and admission control."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: State = "loading"
        self.error: str | None = None
        self.engine: Engine | None = None
        self.bundle: Bundle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pancreas-model")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._mean_run_s = 1.0

    # ---- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up the engine on the model thread; sets ``state`` to ready or failed."""
        try:
            self.engine = await asyncio.wrap_future(self._executor.submit(self._load))
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.exception("model failed to load")
            return
        self.state = "ready"
        logger.info("model ready: %s", self.engine.info)

    def _load(self) -> Engine:
        from pancreas.bundle import Bundle

        started = time.perf_counter()
        self.bundle = Bundle.load(self.settings.bundle_path())
        engine = build_engine(self.settings, self.bundle)
        if self.settings.warmup:
            engine.warmup()
        logger.info("engine loaded and warmed up in %.1f s", time.perf_counter() - started)
        return engine

    async def close(self) -> None:
        """Finish the admitted jobs, then stop the model thread."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.state = "stopped"

    # ---- admission -----------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return self._admitted - self._running

    @property
    def running(self) -> int:
        return self._running

    def check_ready(self) -> None:
        if self.state != "ready":
            why = f" ({self.error})" if self.error else ""
            raise ServiceError("not_ready", f"the model is {self.state}{why}; retry when /readyz answers 200",
                               headers={"Retry-After": "5"})

    def check_capacity(self) -> None:
        """Raise ``queue_full`` when no slot is free (cheap pre-check before an upload is read)."""
        if self._admitted >= self.settings.queue_size:
            raise self._queue_full()

    def _queue_full(self) -> ServiceError:
        retry = max(1, math.ceil(self._mean_run_s * max(1, self._admitted)))
        return ServiceError("queue_full", f"{self._admitted} requests are already queued "
                            f"(PANCREAS_QUEUE_SIZE={self.settings.queue_size}); retry in {retry} s",
                            headers={"Retry-After": str(retry)})

    # ---- prediction ----------------------------------------------------------------------------------
    async def predict(self, volume: Volume, *, timeout_s: float) -> Job:
        """Run the engine on ``volume``; raise ``queue_full``, ``not_ready`` or ``timeout``."""
        self.check_ready()
        with self._lock:
            if self._admitted >= self.settings.queue_size:
                raise self._queue_full()
            self._admitted += 1
        submitted = time.perf_counter()
        try:
            future = self._executor.submit(self._run, volume, submitted)
        except RuntimeError as exc:  # executor already shut down
            self._release(None)
            raise ServiceError("not_ready", "the service is shutting down") from exc
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), max(timeout_s, 0.001))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            future.cancel()  # only succeeds while the job still waits; a running job finishes
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ServiceError("timeout", f"no result within {self.settings.request_timeout_s:g} s "
                               "(PANCREAS_REQUEST_TIMEOUT_S); retry later or send a smaller volume") from exc

    def _run(self, volume: Volume, submitted: float) -> Job:
        started = time.perf_counter()
        with self._lock:
            self._running += 1
        try:
            prediction = self.engine.predict(volume)
        finally:
            with self._lock:
                self._running -= 1
        ended = time.perf_counter()
        self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * (ended - started)
        return Job(prediction, (started - submitted) * 1000.0, (ended - started) * 1000.0)

    def _release(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._admitted -= 1
