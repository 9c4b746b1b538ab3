"""Uploads: stream a multipart file to disk, decompress it with bounded memory, read it as a Volume.

Limits are enforced at every step, before work is spent on them (admission, a queue slot, comes first:
:meth:`service.worker.ModelWorker.admission`, before the body is read):

1. the request's ``Content-Length`` (when sent) against ``max_upload_bytes``, before reading the body;
2. the bytes actually received, while streaming (chunked uploads have no length), each read within
   ``upload_read_timeout_s`` and the whole body within ``upload_timeout_s``; on shutdown the upload is cut;
3. the NIfTI header (:func:`pancreas.nifti.check_nifti_header`: size against ``max_voxels``, voxel type,
   spacing, geometry), before any voxel is decoded;
4. the decompressed size, while decompressing: zlib runs incrementally with a bounded output per step
   and stops as soon as the stream yields more than the header declares (a gzip bomb costs at most
   one step's output of memory).

The client's file name is never used: files live under server-chosen names in a per-request folder
that the caller removes (see :func:`request_workdir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from pancreas.errors import InvalidImageError
from pancreas.nifti import (
    HEADER_BYTES,
    NiftiInfo,
    Volume,
    check_nifti_header,
    parse_nifti_header,
    read_volume,
)
from service.errors import UploadError

FIELD = "file"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers on top of the file itself
NAME = "upload"  # how the file is named in messages (never the client's name, never a server path)


@dataclass(frozen=True)
class UploadLimits:
    """Size and time bounds of one upload."""

    max_bytes: int
    read_timeout_s: float  # longest wait for the next chunk
    deadline: float  # time.monotonic() by which the whole body must have arrived


@contextlib.contextmanager
def request_workdir(root: Path | None) -> Iterator[Path]:
    """A private temporary folder for one request, always removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pancreas-req-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- 1, 2: receive ---------------------------------------------------------------------------------
class _FilePartSink:
    """python-multipart callbacks writing the ``file`` field to ``dest`` with a byte limit."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        self.dest, self.max_bytes = dest, max_bytes
        self.size = 0
        self.found = self.ended = False
        self._header, self._value, self._disposition = b"", b"", b""
        self._current_is_file = False
        self._fh = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self._disposition, self._current_is_file = b"", False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == FIELD.encode() and not self.found:  # only the first "file" part
            self.found = self._current_is_file = True
            self._fh = open(self.dest, "wb")  # noqa: SIM115 - closed in _part_end / close()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._current_is_file:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise UploadError(f"upload exceeds the limit of {self.max_bytes} bytes; send a smaller file "
                              "or raise PANCREAS_MAX_UPLOAD_BYTES", code="upload_too_large")
        self._fh.write(data[start:end])

    def _part_end(self) -> None:
        if self._current_is_file:
            self.close()
            self._current_is_file = False

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _boundary(request: Request) -> bytes:
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UploadError(f"content type {ctype.decode('latin-1') or '(none)'!r} is not supported; send "
                          f"multipart/form-data with the image in the {FIELD!r} field "
                          f"(curl -F {FIELD}=@ct.nii.gz)", code="unsupported_media_type")
    if b"boundary" not in options:
        raise UploadError("multipart/form-data request has no boundary", code="malformed_multipart")
    return options[b"boundary"]


async def _chunks(request: Request, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The body's chunks, each within ``read_timeout_s`` and all before ``deadline``."""
    stream = request.stream().__aiter__()
    while True:
        left = limits.deadline - time.monotonic()
        wait = min(limits.read_timeout_s, left)
        try:
            chunk = await asyncio.wait_for(anext(stream), max(wait, 0.0))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            what = (f"no data for {limits.read_timeout_s:g} s" if wait < left
                    else "the upload did not complete in time")
            raise UploadError(f"{what}; send the file at once (PANCREAS_UPLOAD_READ_TIMEOUT_S, "
                              "PANCREAS_UPLOAD_TIMEOUT_S)", code="upload_timeout") from None
        yield chunk


async def _stream_to(request: Request, sink: _FilePartSink, boundary: bytes, limits: UploadLimits) -> None:
    received = 0
    try:
        parser = MultipartParser(boundary, sink.callbacks())
        async for chunk in _chunks(request, limits):
            received += len(chunk)
            if received > limits.max_bytes + _MULTIPART_OVERHEAD:  # other fields count too
                raise UploadError(f"request body exceeds the upload limit of {limits.max_bytes} bytes",
                                  code="upload_too_large")
            parser.write(chunk)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        if isinstance(exc, UploadError):
            raise
        raise UploadError(f"malformed multipart body ({exc})", code="malformed_multipart") from exc
    except ClientDisconnect as exc:
        raise UploadError("client disconnected during the upload", code="malformed_multipart") from exc


async def receive_upload(request: Request, dest: Path, *, limits: UploadLimits,
                         stop: asyncio.Event | None = None) -> int:
    """Stream the multipart ``file`` field of ``request`` into ``dest``; return its size in bytes.

    ``stop`` (set on shutdown) cuts the upload off with ``shutting_down``.
    """
    boundary = _boundary(request)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limits.max_bytes + _MULTIPART_OVERHEAD:
        raise UploadError(f"request body of {length} bytes exceeds the upload limit of {limits.max_bytes} bytes",
                          code="upload_too_large")
    sink = _FilePartSink(dest, limits.max_bytes)
    upload = asyncio.ensure_future(_stream_to(request, sink, boundary, limits))
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        await asyncio.wait([t for t in (upload, stopped) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        if not upload.done():
            raise UploadError("the service is shutting down; retry on another instance", code="shutting_down")
        upload.result()
    finally:
        for task in (upload, stopped):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        sink.close()
    if not sink.found:
        raise UploadError(f"no {FIELD!r} field in the form; send the image as {FIELD}=@ct.nii.gz",
                          code="missing_file")
    if not sink.ended:
        raise UploadError("multipart body ended before its closing boundary", code="malformed_multipart")
    if sink.size == 0:
        raise UploadError("the uploaded file is empty", code="empty_file")
    return sink.size


# ---- 3: header --------------------------------------------------------------------------------------
def header_info(head: bytes, *, max_voxels: int) -> NiftiInfo:
    """Parse and check the NIfTI-1/2 header at the start of ``head`` (the readers' own checks)."""
    return check_nifti_header(parse_nifti_header(head, name=NAME), name=NAME, max_voxels=max_voxels)


# ---- 4: decompress ----------------------------------------------------------------------------------
def _gunzip_bounded(src: Path, dest: Path, *, max_voxels: int, max_bytes: int) -> NiftiInfo:
    """Decompress ``src`` into ``dest``, never producing more than the header declares."""
    head, info, written, limit = b"", None, 0, max_bytes
    d, in_member = zlib.decompressobj(zlib.MAX_WBITS | 16), False
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        for chunk in iter(lambda: fin.read(_CHUNK), b""):
            pending = chunk
            while True:
                step = max(1, min(_CHUNK, limit - written + 1))
                try:
                    out = d.decompress(pending, step)
                except zlib.error as exc:
                    raise InvalidImageError(f"the gzip stream is corrupt ({exc})", code="corrupt") from exc
                in_member, written = True, written + len(out)
                if info is None:
                    head += out[:HEADER_BYTES]
                    if len(head) >= HEADER_BYTES:
                        info = header_info(head, max_voxels=max_voxels)
                        limit = min(limit, info.expected_bytes)
                if written > limit:
                    raise InvalidImageError(
                        f"the gzip stream decompresses to more than {limit} bytes, the size its NIfTI "
                        "header declares (gzip bomb or trailing data)", code="decompressed_too_large")
                fout.write(out)
                pending = d.unconsumed_tail
                if d.eof:  # a next gzip member may follow (concatenated .gz files are valid)
                    pending, d, in_member = d.unused_data, zlib.decompressobj(zlib.MAX_WBITS | 16), False
                    if not pending:
                        break
                elif not pending and len(out) < step:
                    break
    if in_member:
        raise InvalidImageError("the gzip stream is truncated; upload the complete file", code="truncated_gzip")
    return info if info is not None else header_info(head, max_voxels=max_voxels)


def materialize(raw: Path, dest: Path, *, max_voxels: int, max_bytes: int) -> Path:
    """Turn the uploaded bytes into a checked, uncompressed single-file ``.nii`` at ``dest``."""
    with open(raw, "rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        info = _gunzip_bounded(raw, dest, max_voxels=max_voxels, max_bytes=max_bytes)
    else:
        with open(raw, "rb") as f:
            info = header_info(f.read(HEADER_BYTES), max_voxels=max_voxels)
        raw.replace(dest)
    size = dest.stat().st_size
    if size < info.expected_bytes:
        raise InvalidImageError(f"the NIfTI file holds {size} bytes but its header declares "
                                f"{info.expected_bytes}; upload the complete file", code="truncated")
    return dest


def decode_upload(raw: Path, workdir: Path, *, max_voxels: int, max_bytes: int) -> Volume:
    """Decompress, check and read an uploaded file into a canonical :class:`~pancreas.nifti.Volume`."""
    nii = materialize(raw, workdir / "image.nii", max_voxels=max_voxels, max_bytes=max_bytes)
    raw.unlink(missing_ok=True)
    return read_volume(nii, max_voxels=max_voxels, name=NAME)
