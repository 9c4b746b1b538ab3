"""TensorRT engine build from an exported ONNX model (``tensorrt`` Python API, TensorRT 10), and the one rule
for whether an engine fits a GPU.

Stages, as in NVIDIA's samples: parse the ONNX with ``trt.OnnxParser`` (every parser error collected into
one message) → builder config (FP16 flag, INT8 flag for QDQ models, TF32 cleared for fp32, workspace) → one optimization profile
for batch 1..N at the fixed patch size → build with a timing cache (read from and written back to disk; a rejected one is replaced) →
serialized engine (``.plan``) plus a metadata JSON (TensorRT version, GPU name, compute capability, the
precision *actually* built, the profile, the ONNX checksum).

A precision the GPU cannot run fast is not silently dropped: the build raises unless
``allow_fallback`` is set, and then the metadata records what was built. ``tensorrt`` and ``torch`` are
imported inside the functions; where TensorRT cannot be imported :func:`require_tensorrt` raises a clear error.

Engines are specific to a GPU model, its compute capability and the TensorRT version (:class:`EngineTarget`).
:func:`engine_mismatch` is the rule that compares what an engine was built for with a machine; the backend
(:func:`engine_matches`, then a rebuild), ``optimize`` and the Docker entrypoint all ask it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pancreas.bundle import sha256_of
from pancreas.errors import PancreasError
from pancreas.patch import tiles_per_batch

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
        precision: fp32 | fp16 | int8 (int8 expects a symmetric QDQ ONNX, e.g. from ``optimize.quantize``; fp16 is
            enabled alongside so non-quantized layers run in half).
        max_batch / opt_batch: the optimization profile's batch range is ``1..max_batch``.
        workspace_gb: builder workspace memory pool limit.
        allow_fallback: build anyway when the GPU lacks fast fp16/int8 (recorded in the metadata).
        tf32: let fp32 layers of an fp32 engine use TF32 tensor cores (TensorRT's default on Ampere and
            newer: ~1e-3 relative error per layer, above the fp32 parity tolerance). Off: an fp32 engine
            is full fp32. fp16/int8 engines keep TF32 for their remaining fp32 layers (recorded in ``flags``).
    """

    precision: str = "fp16"
    max_batch: int = 4
    opt_batch: int = 2
    workspace_gb: float = 4.0
    allow_fallback: bool = False
    tf32: bool = False


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


@functools.lru_cache(maxsize=1)
def trt_logger() -> Any:
    """The process's one TensorRT logger: builders and runtimes keep a pointer to it, so it must outlive them."""
    trt = require_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def gpu_identity(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability ``"major.minor"``) of ``device`` (``cuda``: the current device)."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs a CUDA GPU, and torch sees none")
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


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
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        if build.precision == "fp32" and not build.tf32:
            config.clear_flag(tf32)  # set by default: fp32 convolutions would run in TF32
        if config.get_flag(tf32):
            flags.append("TF32")
    return flags


def profile_batches(build: TrtBuildConfig, patch: list[int]) -> tuple[int, int]:
    """(opt, max) batch of the optimization profile: ``build``'s, in slices for a 2D network
    (:func:`pancreas.patch.tiles_per_batch`, the rule the sliding window batches by)."""
    top = tiles_per_batch(build.max_batch, patch)
    return max(1, min(tiles_per_batch(build.opt_batch, patch), top)), top


def _profile(builder: Any, network: Any, build: TrtBuildConfig) -> tuple[Any, list[int]]:
    shape = list(network.get_input(0).shape)  # [-1, C, D, H, W] (a 2D network: [-1, C, H, W]); C = 3 for a cascade
    if network.get_input(0).name != INPUT_NAME or len(shape) not in (4, 5) or int(shape[1]) < 1:
        raise TensorRTError(f"ONNX input is {network.get_input(0).name} {shape}; expected '{INPUT_NAME}' "
                            "[B,C,D,H,W] (or [B,C,H,W] for a 2D network) with a fixed channel count C")
    channels, patch = int(shape[1]), [int(s) for s in shape[2:]]
    profile = builder.create_optimization_profile()
    opt, top = profile_batches(build, patch)
    profile.set_shape(INPUT_NAME, (1, channels, *patch), (opt, channels, *patch), (top, channels, *patch))
    return profile, patch


def _use_timing_cache(bconfig: Any, cache_path: Path) -> None:
    """Start from the timing cache on disk; one TensorRT rejects (another GPU or version) is replaced."""
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    if bconfig.set_timing_cache(bconfig.create_timing_cache(data), ignore_mismatch=False):
        return
    logger.warning("TensorRT rejected the timing cache %s (written for another GPU or TensorRT version); "
                   "timing every tactic afresh", cache_path)
    if not bconfig.set_timing_cache(bconfig.create_timing_cache(b""), ignore_mismatch=False):
        raise TensorRTError("TensorRT rejected an empty timing cache; see the TensorRT log above")


def _save_timing_cache(bconfig: Any, cache_path: Path) -> None:
    cache = bconfig.get_timing_cache()
    if cache is None:
        logger.warning("TensorRT returned no timing cache; %s is not updated", cache_path)
        return
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(cache.serialize()))


def build_engine(onnx_path: str | Path, out: str | Path, *, config: TrtBuildConfig = TrtBuildConfig(),
                 timing_cache: str | Path | None = None, device: str = "cuda") -> EngineMetadata:
    """Build and serialize an engine for ``onnx_path`` on ``device`` into ``out`` (+ ``out.json`` metadata).

    Raises:
        TensorRTUnavailableError: no tensorrt package or no GPU.
        TensorRTError: parse errors (all of them), unsupported precision, failed build.
    """
    import torch

    trt = require_tensorrt()
    gpu, cc = gpu_identity(device)
    onnx_path, out = Path(onnx_path), Path(out)
    t0 = time.perf_counter()
    with torch.cuda.device(torch.device(device)):  # TensorRT builds on the current CUDA device
        builder = trt.Builder(trt_logger())
        network, _parser = _parse(trt, builder, trt_logger(), onnx_path)
        bconfig = builder.create_builder_config()
        bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gb * (1 << 30)))
        flags = _precision_flags(trt, builder, bconfig, config)
        profile, patch = _profile(builder, network, config)
        bconfig.add_optimization_profile(profile)
        cache_path = Path(timing_cache) if timing_cache is not None else out.with_suffix(".timing.cache")
        _use_timing_cache(bconfig, cache_path)
        serialized = builder.build_serialized_network(network, bconfig)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path} at {config.precision}; "
                            "see the TensorRT log above")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    _save_timing_cache(bconfig, cache_path)
    built = "int8" if "INT8" in flags else "fp16" if "FP16" in flags else "fp32"  # TF32 is still fp32
    io = {network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)}
    meta = EngineMetadata(tensorrt_version=trt.__version__, gpu_name=gpu, compute_capability=cc, precision=built,
                          flags=flags, patch_size=patch, min_batch=1, opt_batch=profile_batches(config, patch)[0],
                          max_batch=profile_batches(config, patch)[1], onnx_sha256=sha256_of(onnx_path),
                          build_seconds=round(time.perf_counter() - t0, 2), io=io)
    meta.write(metadata_path(out))
    logger.info("built TensorRT %s engine %s on %s (sm %s) in %.0f s", built, out, gpu, cc, meta.build_seconds)
    return meta


def metadata_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


@dataclass(frozen=True)
class EngineTarget:
    """What a TensorRT engine is specific to (``None``: unknown or not available)."""

    gpu_name: str | None = None
    compute_capability: str | None = None  # "major.minor", as :func:`gpu_identity` reports it
    tensorrt_version: str | None = None

    @classmethod
    def of(cls, built: EngineMetadata | Mapping[str, Any]) -> EngineTarget:
        """The target recorded in an engine's metadata (the object or its JSON, e.g. ``Artifact.info["engine"]``)."""
        record = asdict(built) if isinstance(built, EngineMetadata) else built
        return cls(*(None if record.get(k) is None else str(record[k])
                     for k in ("gpu_name", "compute_capability", "tensorrt_version")))


def current_target(device: str = "cuda") -> EngineTarget:
    """This machine's :class:`EngineTarget` on ``device``; raises :class:`TensorRTUnavailableError` without
    TensorRT or a GPU."""
    trt = require_tensorrt()
    gpu, cc = gpu_identity(device)
    return EngineTarget(gpu, cc, str(trt.__version__))


def engine_mismatch(built: EngineTarget, here: EngineTarget) -> str | None:
    """``None`` when an engine built for ``built`` runs on ``here``, else why not (the engine-fits-this-GPU rule)."""
    if built.tensorrt_version != here.tensorrt_version:
        return f"engine built with TensorRT {built.tensorrt_version}, this is {here.tensorrt_version}"
    if (built.gpu_name, built.compute_capability) != (here.gpu_name, here.compute_capability):
        return (f"engine built for {built.gpu_name} (sm {built.compute_capability}), this is {here.gpu_name} "
                f"(sm {here.compute_capability})")
    return None


def engine_matches(engine: str | Path, device: str = "cuda") -> tuple[bool, str]:
    """Whether the engine file ``engine`` and its metadata exist and fit ``device``'s GPU and this TensorRT
    version (:func:`engine_mismatch`), and why not."""
    require_tensorrt()
    meta_file = metadata_path(engine)
    if not Path(engine).is_file() or not meta_file.is_file():
        return False, f"{engine} or its metadata {meta_file.name} is missing"
    why = engine_mismatch(EngineTarget.of(EngineMetadata.read(meta_file)), current_target(device))
    return why is None, why or "ok"
