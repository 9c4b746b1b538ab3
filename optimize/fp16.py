"""ONNX float16 conversion (onnxruntime's ``transformers.float16`` converter), I/O kept float32.

fp16 is a GPU recipe: on this project's CPUs onnxruntime runs fp16 convolutions *slower* than fp32 (it
casts around unsupported kernels), so the recipe records the measured latency instead of assuming a gain.
Numerically sensitive ops stay float32 through ``op_block_list`` (onnxruntime's defaults plus
InstanceNormalization and Softmax, whose reductions overflow or lose precision in half).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fp16Config:
    """Options of :func:`convert_fp16`.

    Args:
        keep_io_types: keep graph inputs/outputs float32 (the backend contract is float32 in and out).
        extra_block_ops: op types kept in float32 on top of onnxruntime's default block list.
    """

    keep_io_types: bool = True
    extra_block_ops: tuple[str, ...] = ("InstanceNormalization", "Softmax", "ReduceSum")


def convert_fp16(fp32: str | Path, out: str | Path, *, config: Fp16Config = Fp16Config()) -> Path:
    """Write a float16 copy of ``fp32`` to ``out`` (float32 I/O); the result passes ``onnx.checker``."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    fp32, out = Path(fp32), Path(out)
    if not fp32.is_file():
        raise PancreasError(f"fp16 conversion needs an fp32 ONNX model; {fp32} does not exist (run the onnx recipe)")
    model = onnx.load(str(fp32))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.extra_block_ops))
    half = convert_float_to_float16(model, keep_io_types=config.keep_io_types, op_block_list=block)
    _toposort(half.graph)
    onnx.checker.check_model(half)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out))
    logger.info("wrote fp16 model %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _toposort(graph: object) -> None:
    """Sort ``graph.node`` topologically in place (the converter appends its input Casts at the end)."""
    nodes = list(graph.node)  # type: ignore[attr-defined]
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}  # type: ignore[attr-defined]
    ordered, pending = [], nodes
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise PancreasError("fp16 graph has a cycle or a dangling input; re-export the fp32 model")
        for n in ready:
            available.update(n.output)
        ordered += ready
        pending = [n for n in pending if n not in ready]
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(ordered)  # type: ignore[attr-defined]
