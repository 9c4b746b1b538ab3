"""FastAPI dependencies (``Annotated`` aliases used by the routers)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ServiceError
from service.prometheus import ServiceMetrics
from service.settings import Settings
from service.worker import ModelWorker


@dataclass
class Services:
    """Per-app singletons, created in :func:`service.main.create_app` and kept on ``app.state``."""

    settings: Settings
    worker: ModelWorker
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="the PANCREAS_API_KEY, when the server sets one")


def require_api_key(services: ServicesDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Check ``Authorization: Bearer <key>`` when ``PANCREAS_API_KEY`` is set (constant-time compare)."""
    key = services.settings.api_key
    if key is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not given or not secrets.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise ServiceError("unauthorized", "missing or wrong API key; send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})


ApiKeyDep = Annotated[None, Depends(require_api_key)]
