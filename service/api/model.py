"""The served model: bundle metadata plus the backend and precision actually running."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import ApiKeyDep, ServicesDep
from service.schemas import ErrorResponse, MemberInfo, ModelInfo

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
                     members=_members(info), metadata=metadata)


def _members(info: dict[str, Any]) -> list[MemberInfo]:
    """The members of an ensemble engine's ``info`` (empty for a single model)."""
    out = []
    for name, m in (info.get("members") or {}).items():
        patch = m.get("patch_size")
        out.append(MemberInfo(name=str(name), configuration=str(m.get("configuration", "")),
                              bundle=str(m.get("name", "")), version=str(m.get("version", "")),
                              backend=str(m.get("backend", "")), precision=str(m.get("precision", "")),
                              device=str(m.get("device", "")), patch_size=list(patch) if patch else None,
                              folds=int(m.get("folds", 1))))
    return out


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
