"""TensorRT backend: a serialized engine (``.plan``) built by :mod:`pancreas.backends.tensorrt_build`.

Engines are specific to a GPU model and a TensorRT version. On start the backend compares the engine's
metadata (``<engine>.json``: TensorRT version, GPU name, compute capability) with this machine
(:func:`~pancreas.backends.tensorrt_build.engine_matches`); when they differ, or the engine is missing, it
rebuilds the engine from the bundle's ONNX artifact named in ``Artifact.info["onnx"]`` with the recorded
build options (``info["build"]``) into ``$XDG_CACHE_HOME/pancreas/tensorrt/`` (never into the bundle, whose
artifacts are checksummed). The precision reported is the one recorded as *built*. Buffers are torch CUDA
tensors; the engine runs with ``execute_async_v3`` on a dedicated CUDA stream (TensorRT 10 name-based I/O API).

``tensorrt`` is imported only when this backend is created.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pancreas.backends import BackendUnavailableError, patch_size_of, resolve_device
from pancreas.backends.tensorrt_build import (
    EngineMetadata,
    TrtBuildConfig,
    build_engine,
    engine_matches,
    metadata_path,
    require_tensorrt,
    trt_logger,
)
from pancreas.bundle import Artifact, Bundle
from pancreas.errors import BundleError
from pancreas.patch import tiles_per_batch

if TYPE_CHECKING:
    from pancreas.engine_config import EngineConfig

logger = logging.getLogger(__name__)


#: TensorRT DataType name -> torch dtype name (names a TensorRT version lacks are skipped)
TRT_DTYPES: dict[str, str] = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                              "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    for trt_name, torch_name in TRT_DTYPES.items():
        if getattr(trt.DataType, trt_name, None) == dtype:
            return getattr(torch, torch_name)
    raise BackendUnavailableError(f"TensorRT engine output dtype {dtype} has no torch buffer type here; "
                                  f"supported: {sorted(TRT_DTYPES)}")


class TensorRTBackend:
    """One deserialized engine with one execution context (optimization profile 0)."""

    name = "tensorrt"
    accepts_tensors = True

    def __init__(self, engine_path: str | Path, *, precision: str, patch_size: tuple[int, ...],
                 max_batch: int, device: str = "cuda") -> None:
        import torch

        trt = require_tensorrt()
        self._trt = trt
        self._logger = trt_logger()  # the runtime keeps a pointer to it: it must outlive the runtime
        with torch.cuda.device(torch.device(device)):  # TensorRT uses the current CUDA device
            self.runtime = trt.Runtime(self._logger)
            self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise BackendUnavailableError(f"TensorRT could not deserialize {engine_path}; rebuild it for this GPU")
            self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = {len(self.engine.get_tensor_shape(n)): n for n in names if n not in inputs}
        rank = len(self.engine.get_tensor_shape(inputs[0])) if len(inputs) == 1 else 0  # 5: 3D network, 4: 2D
        if rank not in (4, 5) or rank not in outputs or 2 not in outputs:
            raise BundleError(f"TensorRT engine {engine_path} must have one rank-5 (2D network: rank-4) input, a "
                              f"segmentation output of its rank and a rank-2 output; it has {names}",
                              code="bundle_corrupt")
        self.input_name, self.output_names = inputs[0], (outputs[rank], outputs[2])
        self.device, self.precision = device, precision
        self.patch_size = tuple(int(p) for p in patch_size)
        self.max_batch = int(max_batch)

    def _run(self, x: Any) -> tuple[Any, Any]:
        import torch

        with torch.cuda.device(torch.device(self.device)):
            return self._execute(x.to(self.device, dtype=torch.float32).contiguous())

    def _execute(self, x: Any) -> tuple[Any, Any]:
        import torch

        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(name)),
                              device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendUnavailableError("TensorRT execute_async_v3 failed; see the TensorRT log")
        self.stream.synchronize()
        return outs[0].float(), outs[1].float()

    def __call__(self, patches: Any) -> tuple[Any, Any]:
        import torch

        is_tensor = isinstance(patches, torch.Tensor)
        x = patches if is_tensor else torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
        segs, clss = [], []
        for i in range(0, x.shape[0], self.max_batch):
            seg, cls = self._run(x[i:i + self.max_batch])
            segs.append(seg)
            clss.append(cls)
        seg, cls = torch.cat(segs), torch.cat(clss)
        if is_tensor:
            return seg.to(patches.device), cls.to(patches.device)
        return seg.cpu().numpy(), cls.cpu().numpy()


def rebuilt_engine_path(bundle: Bundle, artifact: Artifact) -> Path:
    """Where a rebuilt engine lives: outside the bundle, whose artifacts are checksummed and may be read-only."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pancreas" / "tensorrt"
    folder = root / (artifact.sha256 or bundle.metadata.name)[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / Path(artifact.path).name


def ensure_engine(bundle: Bundle, artifact: Artifact, device: str = "cuda") -> tuple[Path, str]:
    """The engine to load on ``device`` (rebuilt from the ONNX artifact when missing or built for another GPU)
    and its precision."""
    reasons = []
    for candidate in (bundle.path(artifact), rebuilt_engine_path(bundle, artifact)):
        ok, why = engine_matches(candidate, device)
        if ok:
            return candidate, EngineMetadata.read(metadata_path(candidate)).precision
        reasons.append(why)
    why = reasons[0]
    onnx_rel = artifact.info.get("onnx")
    if not onnx_rel:
        raise BackendUnavailableError(f"TensorRT engine {artifact.path} does not match this machine ({why}) and "
                                      "the artifact names no ONNX model to rebuild it from (info.onnx)")
    target = rebuilt_engine_path(bundle, artifact)
    logger.warning("rebuilding TensorRT engine %s: %s", target, why)
    build = TrtBuildConfig(**artifact.info.get("build", {"precision": artifact.precision}))
    meta = build_engine(bundle.root / onnx_rel, target, config=build, device=device)
    return target, meta.precision


def create(bundle: Bundle, config: EngineConfig, artifact: Artifact) -> TensorRTBackend:
    """Factory registered as ``tensorrt`` in :data:`pancreas.backends.BACKENDS`."""
    if artifact.kind != "tensorrt":
        raise BundleError(f"tensorrt backend cannot load a {artifact.kind} artifact ({artifact.path})")
    if config.device == "cpu":
        raise BackendUnavailableError("the tensorrt backend runs on CUDA only; use device='auto' or 'cuda', or "
                                      "the onnxruntime/torch backend on CPU")
    device = resolve_device("cuda" if config.device == "auto" else config.device)
    engine_path, built = ensure_engine(bundle, artifact, device)
    patch = patch_size_of(bundle, artifact)
    max_batch = tiles_per_batch(int(artifact.info.get("build", {}).get("max_batch", config.batch_size)), patch)
    logger.info("tensorrt backend: %s (%s) on %s", engine_path, built, device)
    return TensorRTBackend(engine_path, precision=built, patch_size=patch, max_batch=max_batch, device=device)
