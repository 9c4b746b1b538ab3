"""TensorRT engine build from the exported ONNX (``tensorrt`` Python API, TensorRT 10).

Stages, as in NVIDIA's samples: parse the ONNX with ``trt.OnnxParser`` (every parser error collected into
one message) → builder config (FP16 flag, INT8 flag for QDQ models, workspace) → one optimization profile
for batch 1..N at the fixed patch size → build with a timing cache (read from and written back to disk) →
serialized engine (``.plan``) plus a metadata JSON (TensorRT version, GPU name, compute capability, the
precision *actually* built, the profile, the ONNX checksum).

A precision the GPU cannot run fast is not silently dropped: the build raises unless
``allow_fallback`` is set, and then the metadata records what was built. ``tensorrt`` is imported inside
the functions; where it cannot be imported :func:`require_tensorrt` raises a clear error. Engines are
specific to a GPU and TensorRT version: :func:`engine_matches` tells the backend when to rebuild.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

INPUT_NAME = "image"


class TensorRTError(PancreasError):
    code = "tensorrt_failed"


class TensorRTUnavailableError(TensorRTError):
    code = "tensorrt_unavailable"


@dataclass(frozen=True)
class TrtBuildConfig:
    """Options of :func:`build_engine`.

    Args:
        precision: fp32 | fp16 | int8 (int8 expects a QDQ ONNX from :mod:`optimize.quantize`; fp16 is
            enabled alongside so non-quantized layers run in half).
        max_batch / opt_batch: the optimization profile's batch range is ``1..max_batch``.
        workspace_gb: builder workspace memory pool limit.
        allow_fallback: build anyway when the GPU lacks fast fp16/int8 (recorded in the metadata).
    """

    precision: str = "fp16"
    max_batch: int = 4
    opt_batch: int = 2
    workspace_gb: float = 4.0
    allow_fallback: bool = False


@dataclass
class EngineMetadata:
    """Written next to the engine as ``<engine>.json``."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    flags: list[str]
    patch_size: list[int]
    min_batch: int
    opt_batch: int
    max_batch: int
    onnx_sha256: str
    build_seconds: float
    io: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> EngineMetadata:
        return cls(**json.loads(Path(path).read_text()))


def require_tensorrt() -> Any:
    """Import ``tensorrt`` or raise :class:`TensorRTUnavailableError` with the fix."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"the tensorrt Python package cannot be imported ({exc}); use the GPU Docker image (NVIDIA base "
            "image with TensorRT) or install TensorRT from NVIDIA's package index") from exc
    return trt


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability ``"major.minor"``) of CUDA device 0."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs a CUDA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def _parse(trt: Any, builder: Any, logger_: Any, onnx_path: Path) -> Any:
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger_)
    if not parser.parse(onnx_path.read_bytes(), path=str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT could not parse {onnx_path} ({len(errors)} errors):\n  - "
                            + "\n  - ".join(errors))
    return network, parser


def _precision_flags(trt: Any, builder: Any, config: Any, build: TrtBuildConfig) -> list[str]:
    """Set FP16/INT8 flags; raise (or record a fallback) when the platform lacks them."""
    wanted = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}
    if build.precision not in wanted:
        raise TensorRTError(f"TensorRT precision {build.precision!r} is not supported; use fp32, fp16 or int8")
    fast = {"FP16": getattr(builder, "platform_has_fast_fp16", True),
            "INT8": getattr(builder, "platform_has_fast_int8", True)}
    flags = []
    for name in wanted[build.precision]:
        if not fast[name] and not build.allow_fallback:
            raise TensorRTError(f"this GPU has no fast {name}; build precision fp32 or pass allow_fallback")
        if fast[name]:
            config.set_flag(getattr(trt.BuilderFlag, name))
            flags.append(name)
    return flags


def _profile(builder: Any, network: Any, build: TrtBuildConfig) -> tuple[Any, list[int]]:
    shape = list(network.get_input(0).shape)  # [-1, 1, D, H, W]
    if network.get_input(0).name != INPUT_NAME or len(shape) != 5:
        raise TensorRTError(f"ONNX input is {network.get_input(0).name} {shape}; expected '{INPUT_NAME}' [B,1,D,H,W]")
    patch = [int(s) for s in shape[2:]]
    profile = builder.create_optimization_profile()
    opt = max(1, min(build.opt_batch, build.max_batch))
    profile.set_shape(INPUT_NAME, (1, 1, *patch), (opt, 1, *patch), (build.max_batch, 1, *patch))
    return profile, patch


def build_engine(onnx_path: str | Path, out: str | Path, *, config: TrtBuildConfig = TrtBuildConfig(),
                 timing_cache: str | Path | None = None) -> EngineMetadata:
    """Build and serialize an engine for ``onnx_path`` into ``out`` (+ ``out.json`` metadata).

    Raises:
        TensorRTUnavailableError: no tensorrt package or no GPU.
        TensorRTError: parse errors (all of them), unsupported precision, failed build.
    """
    from pancreas.bundle import sha256_of

    trt = require_tensorrt()
    gpu, cc = gpu_identity()
    onnx_path, out = Path(onnx_path), Path(out)
    t0 = time.perf_counter()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network, _parser = _parse(trt, builder, trt_logger, onnx_path)
    bconfig = builder.create_builder_config()
    bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gb * (1 << 30)))
    flags = _precision_flags(trt, builder, bconfig, config)
    profile, patch = _profile(builder, network, config)
    bconfig.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache is not None else out.with_suffix(".timing.cache")
    cache = bconfig.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    bconfig.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, bconfig)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path} at {config.precision}; "
                            "see the TensorRT log above")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(bconfig.get_timing_cache().serialize()))
    built = "int8" if "INT8" in flags else "fp16" if "FP16" in flags else "fp32"
    io = {network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)}
    meta = EngineMetadata(tensorrt_version=trt.__version__, gpu_name=gpu, compute_capability=cc, precision=built,
                          flags=flags, patch_size=patch, min_batch=1, opt_batch=max(1, min(config.opt_batch,
                          config.max_batch)), max_batch=config.max_batch, onnx_sha256=sha256_of(onnx_path),
                          build_seconds=round(time.perf_counter() - t0, 2), io=io)
    meta.write(metadata_path(out))
    logger.info("built TensorRT %s engine %s on %s (sm %s) in %.0f s", built, out, gpu, cc, meta.build_seconds)
    return meta


def metadata_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


def engine_matches(engine: str | Path) -> tuple[bool, str]:
    """Whether ``engine``'s metadata matches this GPU and TensorRT version (and why not)."""
    trt = require_tensorrt()
    meta_file = metadata_path(engine)
    if not Path(engine).is_file() or not meta_file.is_file():
        return False, f"{engine} or its metadata {meta_file.name} is missing"
    meta = EngineMetadata.read(meta_file)
    gpu, cc = gpu_identity()
    if meta.tensorrt_version != trt.__version__:
        return False, f"engine built with TensorRT {meta.tensorrt_version}, this is {trt.__version__}"
    if (meta.gpu_name, meta.compute_capability) != (gpu, cc):
        return False, f"engine built for {meta.gpu_name} (sm {meta.compute_capability}), this is {gpu} (sm {cc})"
    return True, "ok"
