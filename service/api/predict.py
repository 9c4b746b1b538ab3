"""POST /v1/predict: a multipart NIfTI upload in; mask, subtype, volumes and timings out."""

from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from service.deps import ApiKeyDep, ServicesDep
from service.pipeline import Served, predict_upload
from service.schemas import ErrorResponse, InputWarningOut, PredictResponse, VolumesMl
from service.uploads import FIELD

router = APIRouter(tags=["predict"])

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "string", "format": "binary",
                           "description": "a 3D CT as .nii or .nii.gz"}}}}}}}
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 504)}
_ERRORS[200] = {"content": {"application/gzip": {}},
                "description": "JSON by default; the mask file itself with ?format=nifti or "
                               "Accept: application/gzip (metadata in X-Subtype, X-Probabilities, "
                               "X-Volumes-Ml, X-Timings-Ms, X-Parts-Ms, X-Model, X-Warnings headers)"}


@router.post("/predict", response_model=PredictResponse, openapi_extra=_UPLOAD_BODY, responses=_ERRORS)
async def predict(request: Request, services: ServicesDep, _auth: ApiKeyDep,
                  format: Annotated[Literal["json", "nifti"] | None, Query()] = None,
                  accept: Annotated[str | None, Header()] = None) -> Response | PredictResponse:
    """Segment pancreas and lesion and classify the lesion subtype of one CT."""
    started = time.perf_counter()
    served = await predict_upload(request, services.settings, services.worker, started=started)
    services.metrics.observe(served.timings.model_dump())
    if format == "nifti" or (format is None and accept is not None and "application/gzip" in accept):
        return _file_response(served)
    return _json_response(served)


def _volumes(served: Served) -> VolumesMl:
    v = served.prediction.volumes_ml
    return VolumesMl(pancreas=float(v.get("pancreas", 0.0)), lesion=float(v.get("lesion", 0.0)))


def _warnings(served: Served) -> list[InputWarningOut]:
    return [InputWarningOut(**w.to_json()) for w in served.prediction.warnings]


def _json_response(served: Served) -> PredictResponse:
    p = served.prediction
    return PredictResponse(subtype=int(p.subtype), probabilities=[float(x) for x in p.probabilities],
                           volumes_ml=_volumes(served), timings_ms=served.timings, parts_ms=served.parts_ms,
                           model=served.model,
                           warnings=_warnings(served), mask=base64.b64encode(served.mask_gz).decode("ascii"))


def _file_response(served: Served) -> Response:
    p = served.prediction
    headers = {
        "X-Subtype": str(int(p.subtype)),
        "X-Probabilities": json.dumps([round(float(x), 6) for x in p.probabilities]),
        "X-Volumes-Ml": _volumes(served).model_dump_json(),
        "X-Timings-Ms": served.timings.model_dump_json(),
        "X-Parts-Ms": json.dumps(served.parts_ms),
        "X-Model": served.model.model_dump_json(),
        "X-Warnings": json.dumps([w.model_dump() for w in _warnings(served)]),
        "Content-Disposition": 'attachment; filename="mask.nii.gz"',
    }
    return Response(served.mask_gz, media_type="application/gzip", headers=headers)
