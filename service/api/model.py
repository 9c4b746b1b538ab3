"""The served model: bundle metadata plus the backend and precision actually running."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ApiKeyDep, ServicesDep
from service.schemas import ErrorResponse, ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, responses={401: {"model": ErrorResponse},
                                                            503: {"model": ErrorResponse}})
def model_info(services: ServicesDep, _auth: ApiKeyDep) -> ModelInfo:
    worker = services.worker
    worker.check_ready()
    info = dict(worker.engine.info)
    metadata = worker.bundle.metadata.model_dump(mode="json") if worker.bundle is not None else {}
    patch = info.get("patch_size")
    return ModelInfo(name=str(info.get("name", metadata.get("name", ""))),
                     version=str(info.get("version", metadata.get("version", ""))),
                     description=str(metadata.get("description", "")),
                     backend=str(info.get("backend", "")), precision=str(info.get("precision", "")),
                     device=str(info.get("device", "")), patch_size=list(patch) if patch else None,
                     engine=_jsonable(info), training_data=dict(metadata.get("training_data", {})),
                     metadata=metadata)


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
