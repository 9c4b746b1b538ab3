"""Stable error contract of the HTTP API.

Every error response has the body ``{"detail": {"code": "<stable code>", "message": "<human text>"}}``.
Clients should branch on ``code``; ``message`` names the bad value and the fix and may change.
Image problems come from :mod:`pancreas.nifti` and :mod:`service.uploads` as
:class:`~pancreas.errors.PancreasError` with a ``code``; :data:`STATUS_BY_CODE` maps it to a status.
"""

from __future__ import annotations

from pancreas.errors import PancreasError

#: HTTP status for each stable error code (codes not listed: 400 for input errors). service/README.md
#: documents every one; tests/service/test_hardening.py checks that the two agree.
STATUS_BY_CODE: dict[str, int] = {
    # the upload is not a usable NIfTI file
    "empty_file": 400,
    "not_nifti": 400,
    "unsupported_format": 400,
    "truncated_gzip": 400,
    "truncated": 400,
    "unreadable": 400,
    "corrupt": 400,
    "invalid_header": 400,
    "malformed_multipart": 400,
    # the request itself
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "upload_timeout": 408,
    "unsupported_media_type": 415,
    "missing_file": 422,
    "invalid_request": 422,
    # size limits
    "upload_too_large": 413,
    "too_large": 413,
    "decompressed_too_large": 413,
    "resampled_too_large": 413,
    # a readable NIfTI that is not a usable CT
    "wrong_dimension": 422,
    "unsupported_dtype": 422,
    "invalid_spacing": 422,
    "invalid_direction": 422,
    "invalid_origin": 422,
    "non_finite": 422,
    "empty_image": 422,
    "too_small": 422,
    # service state
    "queue_full": 503,
    "not_ready": 503,
    "model_failed": 503,
    "shutting_down": 503,
    "timeout": 504,
    "internal_error": 500,
}

#: Codes answered with ``Connection: close``: the client stopped sending, so its connection is not reused.
#: (Other early answers keep it: uvicorn discards the rest of the body, and the client reads the answer.)
CLOSE_CONNECTION = frozenset({"upload_timeout", "shutting_down"})


class ServiceError(Exception):
    """An error raised by the service itself (not by the user's file): auth, queue, readiness, timeout."""

    def __init__(self, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return STATUS_BY_CODE.get(self.code, 500)


class UploadError(PancreasError):
    """The HTTP upload itself is unusable (content type, multipart framing, size, compression)."""

    code = "invalid_upload"


def status_of(exc: PancreasError) -> int:
    """HTTP status for a domain error raised while reading the user's upload."""
    return STATUS_BY_CODE.get(exc.code, 400)


def detail(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
