"""Uploads: stream a multipart file to disk, decompress it with bounded memory, read it as a Volume.

Limits are enforced at every step, before work is spent on them:

1. the request's ``Content-Length`` (when sent) against ``max_upload_bytes``, before reading the body;
2. the bytes actually received, while streaming (chunked uploads have no length);
3. the NIfTI header's claimed size (``dim`` x ``bitpix``) against ``max_voxels``, before decoding voxels;
4. the decompressed size, while decompressing: zlib runs incrementally with a bounded output per step
   and stops as soon as the stream yields more than the header declares (a gzip bomb costs at most
   one step's output of memory).

The client's file name is never used: files live under server-chosen names in a per-request folder
that the caller removes (see :func:`request_workdir`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from pancreas.errors import InvalidImageError
from pancreas.nifti import Volume, read_volume
from service.errors import UploadError

FIELD = "file"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers on top of the file itself


@dataclass(frozen=True)
class NiftiInfo:
    """What the NIfTI header claims: dimensions, bits per voxel and where the voxels start."""

    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: int
    pixdim: tuple[float, ...]
    endian: str = "<"

    @property
    def voxels(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def expected_bytes(self) -> int:
        """Exact size of a single-file ``.nii`` with this header."""
        return self.vox_offset + self.voxels * self.bitpix // 8


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


async def receive_upload(request: Request, dest: Path, *, max_bytes: int) -> int:
    """Stream the multipart ``file`` field of ``request`` into ``dest``; return its size in bytes."""
    boundary = _boundary(request)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + _MULTIPART_OVERHEAD:
        raise UploadError(f"request body of {length} bytes exceeds the upload limit of {max_bytes} bytes",
                          code="upload_too_large")
    sink = _FilePartSink(dest, max_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + _MULTIPART_OVERHEAD:  # other fields count too
                raise UploadError(f"request body exceeds the upload limit of {max_bytes} bytes",
                                  code="upload_too_large")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(f"malformed multipart body ({exc})", code="malformed_multipart") from exc
    except ClientDisconnect as exc:
        raise UploadError("client disconnected during the upload", code="malformed_multipart") from exc
    finally:
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
def parse_nifti_header(head: bytes, *, max_voxels: int) -> NiftiInfo:
    """Parse the fixed part of a NIfTI-1 header and check its claimed size against ``max_voxels``."""
    info = _parse_header(head)
    if any(d < 1 for d in info.dims):
        raise InvalidImageError(f"NIfTI header declares an empty image (dims {info.dims})", code="empty_image")
    if info.voxels > max_voxels:
        raise InvalidImageError(f"NIfTI header declares {info.dims} = {info.voxels} voxels, more than the "
                                f"limit of {max_voxels}; crop or downsample the CT or raise "
                                "PANCREAS_MAX_VOXELS", code="too_large")
    return info


def _parse_header(head: bytes) -> NiftiInfo:
    not_nifti = InvalidImageError("the upload is not a NIfTI-1 file (.nii or .nii.gz)", code="not_nifti")
    if len(head) < 4:
        raise not_nifti
    for e in "<>":
        (sizeof_hdr,) = struct.unpack(e + "i", head[:4])
        if sizeof_hdr == 348 and len(head) >= 352 and head[344:348] == b"n+1\x00":
            ndim, *dim = struct.unpack(e + "8h", head[40:56])
            datatype, bitpix = struct.unpack(e + "2h", head[70:74])
            pixdim = struct.unpack(e + "8f", head[76:108])
            (offset,) = struct.unpack(e + "f", head[108:112])
            return _info(ndim, dim, datatype, bitpix, pixdim, offset, e)
        if sizeof_hdr == 540:
            raise InvalidImageError("NIfTI-2 files are not supported; save the CT as NIfTI-1 "
                                    "(nibabel.Nifti1Image)", code="unsupported_format")
    raise not_nifti


def _info(ndim: int, dim: list[int], datatype: int, bitpix: int, pixdim: tuple[float, ...], offset: float,
          endian: str) -> NiftiInfo:
    if not 1 <= ndim <= 7:
        raise InvalidImageError(f"NIfTI header has {ndim} dimensions (dim[0] must be 1..7)", code="not_nifti")
    if bitpix <= 0 or bitpix % 8:
        raise InvalidImageError(f"NIfTI bitpix {bitpix} is not a whole number of bytes per voxel",
                                code="unsupported_dtype")
    if not (math.isfinite(offset) and 352 <= offset < 1 << 40):
        raise InvalidImageError(f"NIfTI vox_offset {offset} is invalid for a single-file .nii", code="not_nifti")
    spacing = pixdim[1:1 + min(ndim, 3)]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InvalidImageError(f"NIfTI voxel spacing (pixdim) {tuple(spacing)} must be finite and positive; "
                                "fix the header (e.g. nibabel header.set_zooms)", code="invalid_spacing")
    return NiftiInfo(dims=tuple(dim[:ndim]), datatype=datatype, bitpix=bitpix,
                     vox_offset=int(offset), pixdim=tuple(pixdim), endian=endian)


_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating-point voxels


def check_finite(path: Path, info: NiftiInfo, *, chunk: int = 1 << 22) -> None:
    """Reject NaN/inf voxels (SimpleITK silently reads them as 0, so this runs on the raw file)."""
    kind = _FLOAT_TYPES.get(info.datatype)
    if kind is None:
        return
    data = np.memmap(path, dtype=info.endian + kind, mode="r", offset=info.vox_offset, shape=(info.voxels,))
    try:
        for start in range(0, info.voxels, chunk):
            if not np.isfinite(data[start:start + chunk]).all():
                raise InvalidImageError("the image contains NaN or infinite voxel values; replace them "
                                        "(e.g. numpy.nan_to_num) before uploading", code="non_finite")
    finally:
        del data


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
                if info is None and (len(head) + len(out) >= 352):
                    info = parse_nifti_header(head + out, max_voxels=max_voxels)
                    limit = min(limit, info.expected_bytes)
                elif info is None:
                    head += out
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
    return info if info is not None else parse_nifti_header(head, max_voxels=max_voxels)


def materialize(raw: Path, dest: Path, *, max_voxels: int, max_bytes: int) -> Path:
    """Turn the uploaded bytes into a checked, uncompressed single-file ``.nii`` at ``dest``."""
    with open(raw, "rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        info = _gunzip_bounded(raw, dest, max_voxels=max_voxels, max_bytes=max_bytes)
    else:
        with open(raw, "rb") as f:
            info = parse_nifti_header(f.read(352), max_voxels=max_voxels)
        raw.replace(dest)
    size = dest.stat().st_size
    if size < info.expected_bytes:
        raise InvalidImageError(f"the NIfTI file holds {size} bytes but its header declares "
                                f"{info.expected_bytes}; upload the complete file", code="truncated")
    check_finite(dest, info)
    return dest


def decode_upload(raw: Path, workdir: Path, *, max_voxels: int, max_bytes: int) -> Volume:
    """Decompress, check and read an uploaded file into a canonical :class:`~pancreas.nifti.Volume`."""
    nii = materialize(raw, workdir / "image.nii", max_voxels=max_voxels, max_bytes=max_bytes)
    raw.unlink(missing_ok=True)
    return read_volume(nii, max_voxels=max_voxels, name="upload")
