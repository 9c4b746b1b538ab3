"""onnxruntime backend: an ONNX artifact of the multi-task network (fp32, fp16 or int8).

Execution providers: on CUDA devices ``CUDAExecutionProvider`` (and ``TensorrtExecutionProvider`` only when
asked for through ``EngineConfig.providers``) on the device's CUDA index, always with
``CPUExecutionProvider`` last; providers that this onnxruntime build lacks are skipped with a log line, and
a session that fails to start a provider it was asked for is an error (``session.get_providers()`` is
checked), never a silent CPU run. ``device="auto"`` on a GPU host without a GPU provider runs on the CPU
with a warning.

The graph must have one input ``[B,1,*patch]`` and two outputs: segmentation logits (rank 5) and class
logits (rank 2); outputs are told apart by rank. A dynamic batch axis runs any batch; a fixed one makes
the backend split and zero-pad batches to that size (``max_batch``). fp16 graphs get fp16 inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pancreas.backends import BackendUnavailableError, cuda_index, patch_size_of, resolve_device
from pancreas.bundle import Artifact, Bundle
from pancreas.errors import BundleError

if TYPE_CHECKING:
    from pancreas.engine_config import EngineConfig

logger = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
DYNAMIC_MAX_BATCH = 64


#: execution providers that run on a GPU (they take ``device_id``)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _wanted(device: str, requested: Sequence[str] | None) -> list[str]:
    if requested:
        wanted = list(requested)
    elif device.startswith("cuda"):
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    return wanted


def choose_providers(device: str, requested: Sequence[str] | None = None) -> list[str]:
    """Providers to ask for, in order, among those this onnxruntime has."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = _wanted(device, requested)
    missing = [p for p in wanted if p not in available]
    if missing:
        logger.warning("onnxruntime lacks %s (available: %s); skipping them", missing, sorted(available))
    chosen = [p for p in wanted if p in available]
    if device.startswith("cuda") and chosen == ["CPUExecutionProvider"]:
        raise BackendUnavailableError(f"device {device!r} needs a GPU execution provider but onnxruntime has only "
                                      f"{sorted(available)}; install onnxruntime-gpu or use device='cpu'")
    return chosen


def provider_options(providers: Sequence[str], device: str) -> list[dict[str, str]]:
    """Per-provider options: the GPU providers run on ``device``'s CUDA index (``cuda`` -> the current one)."""
    if not device.startswith("cuda"):
        return [{} for _ in providers]
    index = str(cuda_index(device))
    return [{"device_id": index} if p in GPU_PROVIDERS else {} for p in providers]


def check_providers(requested: Sequence[str], active: Sequence[str], path: str | Path) -> None:
    """Raise when a session dropped a requested provider.

    onnxruntime lists ``CUDAExecutionProvider`` whenever onnxruntime-gpu is installed, even where its CUDA
    or cuDNN libraries fail to load; the session then quietly runs on the CPU.
    """
    lost = [p for p in requested if p not in active]
    if lost:
        raise BackendUnavailableError(f"onnxruntime could not start {lost} for {path} (running: {list(active)}); "
                                      "its CUDA/cuDNN/TensorRT libraries probably failed to load (see the "
                                      "onnxruntime log above): fix the GPU install or use device='cpu'")


def session_device(device: str, requested: Sequence[str] | None = None) -> str:
    """``device`` resolved for onnxruntime: ``auto`` on a GPU host whose onnxruntime has no GPU provider runs
    on the CPU (with a warning) instead of failing; an explicit ``cuda`` still fails in :func:`choose_providers`."""
    import onnxruntime as ort

    resolved = resolve_device(device)
    if device != "auto" or not resolved.startswith("cuda"):
        return resolved
    available = set(ort.get_available_providers())
    if not [p for p in _wanted(resolved, requested) if p in GPU_PROVIDERS and p in available]:
        logger.warning("device auto: torch sees a GPU but onnxruntime offers only %s (install onnxruntime-gpu "
                       "for GPU inference); running onnxruntime on the CPU", sorted(available))
        return "cpu"
    return resolved


class OnnxRuntimeBackend:
    """One onnxruntime ``InferenceSession``."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "cpu", precision: str = "fp32",
                 providers: Sequence[str] | None = None, num_threads: int | None = None,
                 patch_size: Sequence[int] | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        wanted = choose_providers(device, providers)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted,
                                                provider_options=provider_options(wanted, device))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions for bad graphs
            raise BundleError(f"ONNX artifact {path} cannot be loaded by onnxruntime ({exc})",
                              code="bundle_corrupt") from exc
        self.providers = list(self.session.get_providers())
        check_providers(wanted, self.providers, path)
        self.device = device
        self.precision = precision
        self._parse_io(path, patch_size)

    def _parse_io(self, path: str | Path, patch_size: Sequence[int] | None) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        ranks = {len(o.shape): o.name for o in outputs}
        rank = len(inputs[0].shape) if len(inputs) == 1 else 0  # 5: a 3D network, 4: a 2D one ([B,1,H,W])
        if rank not in (4, 5) or rank not in ranks or 2 not in ranks:
            raise BundleError(f"ONNX artifact {path} must have one [B,1,D,H,W] (or 2D [B,1,H,W]) input and "
                              f"outputs of the same rank (segmentation) and rank 2 (classes); it has inputs "
                              f"{[i.shape for i in inputs]}, outputs {[o.shape for o in outputs]}")
        inp = inputs[0]
        self.input_name = inp.name
        self.input_dtype = _DTYPES.get(inp.type, np.float32)
        self.output_names = [ranks[rank], ranks[2]]
        batch = inp.shape[0]
        self.fixed_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        self.max_batch = self.fixed_batch or DYNAMIC_MAX_BATCH
        spatial = inp.shape[2:]
        if all(isinstance(s, int) and s > 0 for s in spatial):
            self.patch_size = tuple(int(s) for s in spatial)
        elif patch_size is not None:
            self.patch_size = tuple(int(s) for s in patch_size)
        else:
            raise BundleError(f"ONNX artifact {path} has dynamic spatial axes and no recorded patch_size; "
                              "set Artifact.patch_size in the bundle metadata")

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg, cls = self.session.run(self.output_names, {self.input_name: x.astype(self.input_dtype, copy=False)})
        return np.asarray(seg, dtype=np.float32), np.asarray(cls, dtype=np.float32)

    def __call__(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        patches = np.ascontiguousarray(patches, dtype=np.float32)
        if self.fixed_batch is None:
            return self._run(patches)
        segs, clss = [], []
        for i in range(0, patches.shape[0], self.fixed_batch):
            chunk = patches[i:i + self.fixed_batch]
            n = chunk.shape[0]
            if n < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            seg, cls = self._run(chunk)
            segs.append(seg[:n])
            clss.append(cls[:n])
        return np.concatenate(segs), np.concatenate(clss)


def create(bundle: Bundle, config: EngineConfig, artifact: Artifact) -> OnnxRuntimeBackend:
    """Factory registered as ``onnxruntime`` in :data:`pancreas.backends.BACKENDS`."""
    if artifact.kind != "onnx":
        raise BundleError(f"onnxruntime backend cannot load a {artifact.kind} artifact ({artifact.path})")
    device = session_device(config.device, config.providers)
    backend = OnnxRuntimeBackend(bundle.path(artifact), device=device, precision=artifact.precision,
                                 providers=config.providers, num_threads=config.num_threads,
                                 patch_size=patch_size_of(bundle, artifact))
    logger.info("onnxruntime backend: %s (%s) with %s", artifact.path, artifact.precision, backend.providers)
    return backend
