"""Prometheus metrics of one service process (own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pancreas.engine_config import ENGINE_STAGES

#: Stages reported in ``timings_ms`` and observed in ``pancreas_stage_seconds``.
STAGES = ("read", "queue", *ENGINE_STAGES, "encode", "total")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Stage latency histograms, queue depth, predictions and errors by code."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram("pancreas_stage_seconds", "Latency of each /v1/predict stage",
                                       ["stage"], buckets=_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("pancreas_queue_depth",
                                 "Requests admitted and not running (uploading or waiting for the model)",
                                 registry=self.registry)
        self.in_progress = Gauge("pancreas_in_progress", "Requests the model is running now",
                                 registry=self.registry)
        self.predictions = Counter("pancreas_predictions", "Successful predictions", registry=self.registry)
        self.errors = Counter("pancreas_errors", "Failed requests by stable error code", ["code"],
                              registry=self.registry)
        for stage in STAGES:  # export every series from the start, not after the first request
            self.stage_seconds.labels(stage=stage)

    def bind_queue(self, waiting: Callable[[], float], running: Callable[[], float]) -> None:
        self.queue_depth.set_function(waiting)
        self.in_progress.set_function(running)

    def observe(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)
        self.predictions.inc()

    def error(self, code: str) -> None:
        self.errors.labels(code=code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
