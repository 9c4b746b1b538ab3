"""One model instance behind a bounded admission.

The engine lives on a single dedicated thread (``ThreadPoolExecutor(max_workers=1)``): requests run one
after the other, never concurrently on the model. Admission is bounded and happens *before* a request's
body is read: at most ``queue_size`` requests hold a slot (uploading, waiting or running); the next one
gets :class:`ServiceError` ``queue_full`` (HTTP 503 with ``Retry-After``) without a byte of its upload
being stored. A slot is freed when the request fails before reaching the model, or when the model has
*finished* its job. A request that times out cancels its job, which stops at its next patch batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pancreas.errors import JobCancelled, PancreasError
from service.errors import ServiceError
from service.settings import Settings

if TYPE_CHECKING:
    from pancreas.bundle import Bundle
    from pancreas.engine import Engine, Prediction
    from pancreas.ensemble_engine import EnsembleEngine
    from pancreas.nifti import Volume

logger = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "stopped"]


@dataclass
class Slot:
    """One admitted request's place; ``handed_over`` once a model job owns (and will free) it."""

    handed_over: bool = False


@dataclass(frozen=True)
class Job:
    """A finished prediction and how long it waited for the model and ran on it."""

    prediction: Prediction
    queue_ms: float
    run_ms: float


def load_engine(settings: Settings, bundle: Bundle) -> Engine | EnsembleEngine:
    """The engine for ``bundle`` configured from ``settings`` (an ensemble bundle: an ensemble engine)."""
    from pancreas.engine import Engine

    return Engine.from_bundle(bundle, settings.engine_config())


class ModelWorker:
    """The single engine, its thread, and admission control."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: State = "loading"
        self.error: str | None = None
        self.engine: Engine | EnsembleEngine | None = None
        self.bundle: Bundle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pancreas-model")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._mean_run_s = 1.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.draining = asyncio.Event()  # set on SIGTERM: uploads still arriving are cut off

    # ---- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up the engine on the model thread; sets ``state`` to ready or failed."""
        self._loop = asyncio.get_running_loop()
        try:
            self.engine = await asyncio.wrap_future(self._executor.submit(self._load))
        except Exception as exc:
            code = f", {exc.code}" if isinstance(exc, PancreasError) else ""
            # clients see the kind of failure, never its text (paths, library internals): that is logged
            self.state = "failed"
            self.error = (f"the model could not be loaded ({type(exc).__name__}{code}); an operator must fix "
                          "the bundle or settings and restart (see the server log)")
            logger.exception("model failed to load")
            return
        self.state = "ready"
        logger.info("model ready: %s", self.engine.info)

    def _load(self) -> Engine | EnsembleEngine:
        from pancreas.bundle import Bundle

        started = time.perf_counter()
        self.bundle = Bundle.load(self.settings.bundle_path())
        engine = load_engine(self.settings, self.bundle)
        if self.settings.warmup:
            engine.warmup()
        logger.info("engine loaded and warmed up in %.1f s", time.perf_counter() - started)
        return engine

    def begin_drain(self) -> None:
        """Cut off uploads still arriving (safe to call from a signal handler)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.draining.set)

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
        """Raise ``not_ready`` (loading, with Retry-After), ``model_failed`` (permanent) or ``shutting_down``."""
        if self.draining.is_set() or self.state == "stopped":
            raise ServiceError("shutting_down", "the service is shutting down; retry on another instance")
        if self.state == "failed":
            raise ServiceError("model_failed", self.error or "the model could not be loaded")
        if self.state != "ready":
            raise ServiceError("not_ready", "the model is loading; retry when /readyz answers 200",
                               headers={"Retry-After": "5"})

    @contextlib.contextmanager
    def admission(self) -> Iterator[Slot]:
        """Take a slot before the request's body is read (``queue_full`` when none is free)."""
        self.check_ready()
        with self._lock:
            if self._admitted >= self.settings.queue_size:
                raise self._queue_full()
            self._admitted += 1
        slot = Slot()
        try:
            yield slot
        finally:
            if not slot.handed_over:
                self._release(None)

    def check_input(self, volume: Volume) -> None:
        """The engine's own resampled-grid bound, applied before the volume is queued for the model."""
        self.check_ready()
        self.engine.check_input(volume)

    def _queue_full(self) -> ServiceError:
        retry = max(1, math.ceil(self._mean_run_s * max(1, self._admitted)))
        return ServiceError("queue_full", f"{self._admitted} requests are already queued "
                            f"(PANCREAS_QUEUE_SIZE={self.settings.queue_size}); retry in {retry} s",
                            headers={"Retry-After": str(retry)})

    # ---- prediction ----------------------------------------------------------------------------------
    async def predict(self, slot: Slot, volume: Volume, *, timeout_s: float) -> Job:
        """Run the engine on ``volume`` in the admitted ``slot``; raise ``timeout`` (the job is cancelled)."""
        self.check_ready()
        submitted, cancel = time.perf_counter(), threading.Event()
        try:
            future = self._executor.submit(self._run, volume, submitted, cancel)
        except RuntimeError as exc:  # executor already shut down
            raise ServiceError("shutting_down", "the service is shutting down") from exc
        slot.handed_over = True
        future.add_done_callback(self._release)
        result = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(result), max(timeout_s, 0.001))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            cancel.set()  # a waiting job never starts; a running one stops at its next patch batch
            future.cancel()
            result.add_done_callback(_consume)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ServiceError("timeout", f"no result within {self.settings.request_timeout_s:g} s "
                               "(PANCREAS_REQUEST_TIMEOUT_S); retry later or send a smaller volume") from exc

    def _run(self, volume: Volume, submitted: float, cancel: threading.Event) -> Job:
        started = time.perf_counter()
        if cancel.is_set():
            raise JobCancelled("cancelled before it started")
        with self._lock:
            self._running += 1
        try:
            prediction = self.engine.predict(volume, cancel=cancel)
        except JobCancelled:
            logger.info("job cancelled after %.1f s (request timed out)", time.perf_counter() - started)
            raise
        finally:
            with self._lock:
                self._running -= 1
        ended = time.perf_counter()
        self._mean_run_s = 0.8 * self._mean_run_s + 0.2 * (ended - started)
        return Job(prediction, (started - submitted) * 1000.0, (ended - started) * 1000.0)

    def _release(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._admitted -= 1


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned job's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
