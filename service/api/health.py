"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.deps import ServicesDep
from service.prometheus import CONTENT_TYPE
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers HTTP (the model may still be loading)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(services: ServicesDep) -> Response:
    """Readiness: 200 once the model is loaded and warmed up; 503 ``loading`` (with Retry-After), ``failed``
    (permanent: no retry hint; the detail names the kind of failure, never a path) or ``stopped``."""
    worker = services.worker
    state = "stopped" if worker.draining.is_set() else worker.state
    body = Readiness(status=state, detail=worker.error)
    headers = {"Retry-After": "5"} if state == "loading" else None
    return JSONResponse(body.model_dump(), status_code=200 if state == "ready" else 503, headers=headers)


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus exposition: per-stage latency histograms, queue depth, predictions, errors by code."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
