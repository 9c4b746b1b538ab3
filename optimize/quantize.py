"""INT8 post-training quantization with onnxruntime's static QDQ quantizer (per-channel weights).

Calibration uses *real* preprocessed patches (see :mod:`optimize.data`), never random data. Every
calibration method in :attr:`Int8Config.methods` is tried; each writes its tensor ranges to a JSON
calibration cache on disk (``calibration_<method>.json``, reused on the next run), and the method whose
model agrees best with the fp32 model on held-out patches wins. Sensitive layers (first conv, the final
segmentation conv, the classification head) are kept in float by default.

Two targets (:data:`INT8_TARGETS`): ``onnxruntime`` (uint8 activations with a zero point, fast on x86
VNNI) and ``tensorrt`` (:func:`tensorrt_int8`): TensorRT's ONNX parser accepts only symmetric signed INT8
Q/DQ (int8 zero points equal to 0, weights and activations; biases stay float, as in NVIDIA's Q/DQ
placement, since an int32 bias DequantizeLinear is not INT8), which :func:`check_symmetric_int8` verifies.
Per-channel weight scales follow onnxruntime's axes (output channels: axis 0 for Conv, 1 for ConvTranspose).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from optimize.export_onnx import INPUT_NAME, OUTPUT_NAMES, onnx_info
from optimize.runners import ort_runner
from optimize.validate import TOLERANCES, ParityReport, check_parity
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

#: groups of nodes that can be kept in float (``Int8Config.keep_float``)
SENSITIVE_GROUPS = ("first_conv", "last_seg_conv", "head")


class QuantizationError(PancreasError):
    code = "quantization_failed"


@dataclass(frozen=True)
class Int8Config:
    """Options of :func:`quantize_int8`.

    Args:
        methods: calibration methods to try (minmax | entropy | percentile); the best agreement wins.
        op_types: ONNX op types to quantize (Conv/ConvTranspose become QLinearConv on CPU).
        keep_float: node groups left in float, from :data:`SENSITIVE_GROUPS`.
        per_channel: per-output-channel weight scales.
        activation_type / weight_type: "quint8" | "qint8" (uint8 activations suit x86 VNNI).
        activation_symmetric: symmetric activation ranges (zero point 0; required by TensorRT).
        reduce_range: 7-bit weights (only for CPUs without VNNI).
        percentile: percentile of the Percentile method.
        target: the runtime the Q/DQ model is written for, from :data:`INT8_TARGETS`.
    """

    methods: tuple[str, ...] = ("minmax", "percentile", "entropy")
    op_types: tuple[str, ...] = ("Conv", "ConvTranspose")
    keep_float: tuple[str, ...] = SENSITIVE_GROUPS
    per_channel: bool = True
    activation_type: str = "quint8"
    weight_type: str = "qint8"
    reduce_range: bool = False
    percentile: float = 99.999
    activation_symmetric: bool = False
    target: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.target not in INT8_TARGETS:
            raise QuantizationError(f"unknown int8 target {self.target!r}; choose from {INT8_TARGETS}")
        if self.target == "tensorrt" and (self.activation_type, self.weight_type, self.activation_symmetric,
                                          self.reduce_range) != ("qint8", "qint8", True, False):
            raise QuantizationError("TensorRT needs symmetric signed INT8 Q/DQ: activation_type='qint8', "
                                    "weight_type='qint8', activation_symmetric=True, reduce_range=False "
                                    "(use tensorrt_int8(config))")


#: runtimes an INT8 Q/DQ model can be written for (``Int8Config.target``)
INT8_TARGETS = ("onnxruntime", "tensorrt")


def tensorrt_int8(config: Int8Config = Int8Config()) -> Int8Config:
    """``config`` (calibration methods, kept-float nodes, op types) with TensorRT's Q/DQ rules applied."""
    return replace(config, activation_type="qint8", weight_type="qint8", activation_symmetric=True,
                   reduce_range=False, target="tensorrt")


def check_symmetric_int8(model_path: str | Path) -> int:
    """Raise unless every QuantizeLinear/DequantizeLinear of ``model_path`` is signed INT8 with zero point 0
    (what TensorRT's ONNX parser accepts); returns the number of Q/DQ nodes checked."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    inits = {t.name: t for t in graph.initializer}
    bad, count = [], 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        count += 1
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None or zp.data_type != onnx.TensorProto.INT8 or numpy_helper.to_array(zp).any():
            bad.append(node.name)
    if bad:
        raise QuantizationError(f"{model_path} is not symmetric signed INT8 Q/DQ (TensorRT rejects it): "
                                f"{len(bad)} of {count} Q/DQ nodes have a non-int8 or non-zero zero point, "
                                f"e.g. {bad[:3]}")
    return count


@dataclass
class Int8Result:
    """The chosen INT8 model, with the measurements that chose it."""

    path: Path
    method: str
    cache: Path
    excluded_nodes: list[str]
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> ParityReport.to_dict()
    ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["cache"] = str(self.path), str(self.cache)
        return d


class PatchReader:
    """onnxruntime ``CalibrationDataReader`` over patches ``[N,1,*patch]``, one patch per inference.

    ``set_range`` lets the quantizer calibrate in chunks (``CalibStridedMinMax``), which bounds the memory
    the histogram calibrators (entropy, percentile) hold at once.
    """

    def __init__(self, patches: np.ndarray) -> None:
        self.patches = np.asarray(patches, dtype=np.float32)
        self.start, self.end = 0, len(self.patches)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.patches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = ({INPUT_NAME: p[None]} for p in self.patches[self.start:self.end])
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self._it = start_index, end_index, None


def sensitive_nodes(model_path: str | Path, groups: tuple[str, ...] = SENSITIVE_GROUPS) -> list[str]:
    """Names of the nodes in ``groups``: the conv reading the input, the conv producing ``seg_logits``,
    and every node of the classification head (``/head/`` scope)."""
    import onnx

    unknown = set(groups) - set(SENSITIVE_GROUPS)
    if unknown:
        raise QuantizationError(f"unknown keep_float groups {sorted(unknown)}; choose from {SENSITIVE_GROUPS}")
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    if "first_conv" in groups:
        names += [n.name for n in graph.node if n.op_type == "Conv" and INPUT_NAME in n.input]
    if "last_seg_conv" in groups:
        node = producer.get(OUTPUT_NAMES[0])
        while node is not None and node.op_type != "Conv":
            node = producer.get(node.input[0])
        names += [node.name] if node is not None else []
    if "head" in groups:
        names += [n.name for n in graph.node if n.name.startswith("/head/")]
    return names


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise QuantizationError(f"unknown calibration method {name!r}; choose from {sorted(table)}")
    return table[name]


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    table = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    if name not in table:
        raise QuantizationError(f"unknown quantization type {name!r}; choose from {sorted(table)}")
    return table[name]


def quantize_with(fp32: Path, out: Path, calib: np.ndarray, method: str, config: Int8Config,
                  cache: Path, exclude: list[str]) -> Path:
    """One static QDQ quantization with ``method``; ranges are read from/written to ``cache``."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    stride = next(k for k in (4, 3, 2, 1) if len(calib) % k == 0)
    extra = {"CalibPercentile": config.percentile, "CalibStridedMinMax": stride,
             "ActivationSymmetric": config.activation_symmetric, "WeightSymmetric": True,
             "QuantizeBias": config.target != "tensorrt"}
    quantize_static(str(fp32), str(out), PatchReader(calib), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types), per_channel=config.per_channel,
                    reduce_range=config.reduce_range, activation_type=_quant_type(config.activation_type),
                    weight_type=_quant_type(config.weight_type), nodes_to_exclude=exclude,
                    calibrate_method=_calibrate_method(method), extra_options=extra,
                    calibration_cache_path=str(cache))
    if config.target == "tensorrt":
        check_symmetric_int8(out)
    return out


def quantize_int8(fp32: str | Path, out: str | Path, calib: np.ndarray, validation: np.ndarray, *,
                  config: Int8Config = Int8Config(), cache_dir: str | Path | None = None) -> Int8Result:
    """Quantize ``fp32`` to ``out``, trying each calibration method and keeping the best one.

    Args:
        fp32: the fp32 ONNX model (from :func:`optimize.export_onnx.export_onnx`).
        calib: real preprocessed calibration patches ``[N,1,*patch]``.
        validation: held-out real patches used to pick the method (argmax agreement with fp32).
        cache_dir: where ``calibration_<method>.json`` caches live (default: next to ``out``).
    """
    fp32, out = Path(fp32), Path(out)
    if len(calib) == 0 or len(validation) == 0:
        raise QuantizationError("INT8 calibration needs real patches: got an empty calibration/validation set")
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    exclude = sensitive_nodes(fp32, config.keep_float)
    reference = ort_runner(fp32)
    reports: dict[str, ParityReport] = {}
    for method in config.methods:
        candidate = out.with_name(f"{out.stem}.{method}.onnx")
        quantize_with(fp32, candidate, calib, method, config, cache_dir / f"calibration_{method}.json", exclude)
        reports[method] = check_parity(reference, ort_runner(candidate), validation, TOLERANCES["int8"])
        logger.info("int8 %s: voxel agreement %.4f", method, reports[method].agreement)
    best = max(reports, key=lambda m: (reports[m].agreement, -reports[m].cls_max_abs_diff))
    shutil.move(out.with_name(f"{out.stem}.{best}.onnx"), out)
    for method in reports:
        out.with_name(f"{out.stem}.{method}.onnx").unlink(missing_ok=True)
    return Int8Result(path=out, method=best, cache=cache_dir / f"calibration_{best}.json", excluded_nodes=exclude,
                      parity={m: r.to_dict() for m, r in reports.items()}, ops=onnx_info(out)["ops"])
