"""ONNX export of the multi-task network: fixed patch size, dynamic batch, both outputs, onnxslim-simplified.

The exported graph has one input ``image`` ``[B,C,*patch]`` float32 (C = 1, or 3 for a cascade stage) and two outputs ``seg_logits``
``[B,3,*patch]`` and ``cls_logits`` ``[B,3]``; only the batch axis is dynamic. Export is the first of
the stages export → :func:`optimize.validate.parity_gate` → quantize/build → validate again.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pancreas.bundle import input_channels_of
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("seg_logits", "cls_logits")


class ExportError(PancreasError):
    """The network could not be exported (or simplified) to ONNX."""

    code = "export_failed"


@dataclass(frozen=True)
class OnnxExportConfig:
    """Options of :func:`export_onnx`.

    Args:
        opset: ONNX opset (17 covers InstanceNormalization/ConvTranspose and TensorRT 8.6+/10 parse it).
        simplify: run onnxslim on the exported graph.
        dynamic_batch: make axis 0 of the input and both outputs dynamic.
    """

    opset: int = 17
    simplify: bool = True
    dynamic_batch: bool = True


def export_onnx(net: Any, patch_size: tuple[int, ...] | list[int], out: str | Path, *,
                config: OnnxExportConfig = OnnxExportConfig()) -> Path:
    """Export a :class:`~pancreas.network.MultiTaskUNet` (eval mode, no deep supervision) to ``out``.

    Raises:
        ExportError: the network has deep supervision on, or torch/onnxslim fail.
    """
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if getattr(net, "deep_supervision", False):
        raise ExportError("export needs deep supervision off: build the network with deep_supervision=False")
    net = net.eval()
    dummy = torch.randn(1, input_channels_of(net), *[int(p) for p in patch_size])
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if config.dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # InstanceNorm always uses instance statistics; the exporter's train=True warning is moot.
            warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(net, (dummy,), str(out), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              opset_version=config.opset, dynamo=False, dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for patch {list(patch_size)}: {exc}") from exc
    if config.simplify:
        simplify_onnx(out)
    check_io(out, patch_size)
    logger.info("exported %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def simplify_onnx(path: Path) -> Path:
    """Simplify ``path`` in place with onnxslim (constant folding, dead-node and shape cleanup)."""
    import onnx
    import onnxslim

    try:
        slim = onnxslim.slim(onnx.load(str(path)))
    except Exception as exc:
        raise ExportError(f"onnxslim failed on {path}: {exc}; export with simplify=False") from exc
    onnx.save(slim, str(path))
    return path


def check_io(path: Path, patch_size: tuple[int, ...] | list[int]) -> None:
    """Check names and static dims of the exported graph (onnx.checker included)."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != [INPUT_NAME] or tuple(names_out) != OUTPUT_NAMES:
        raise ExportError(f"{path}: graph I/O is {names_in} -> {names_out}, expected [{INPUT_NAME}] -> "
                          f"{list(OUTPUT_NAMES)}")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][2:]
    if dims != [int(p) for p in patch_size]:
        raise ExportError(f"{path}: input spatial dims {dims} differ from patch size {list(patch_size)}")


def onnx_info(path: str | Path) -> dict[str, Any]:
    """Node-type histogram, opset and size of an ONNX file (recorded in bundle metadata)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "ops": dict(sorted(ops.items())), "size_mb": round(Path(path).stat().st_size / 1e6, 3)}
