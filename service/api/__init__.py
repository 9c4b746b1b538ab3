"""HTTP routers, one per resource."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import health, model, predict

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(model.router, prefix="/v1")
api_router.include_router(predict.router, prefix="/v1")
