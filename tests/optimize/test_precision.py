"""INT8 (static QDQ, real calibration patches) and fp16 conversion, run in real onnxruntime sessions."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from optimize.fp16 import convert_fp16
from optimize.quantize import Int8Config, QuantizationError, quantize_int8, sensitive_nodes
from optimize.runners import ort_runner, ort_session
from optimize.validate import TOLERANCES, check_parity


def test_int8_quantization_writes_qdq_model_and_calibration_cache(onnx_model, patches, tmp_path):
    calib, val = patches
    config = Int8Config(methods=("minmax", "percentile"))
    result = quantize_int8(onnx_model, tmp_path / "model_int8.onnx", calib.images, val.images, config=config,
                           cache_dir=tmp_path / "calib")
    ops = result.ops
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    for method in config.methods:
        cache = tmp_path / "calib" / f"calibration_{method}.json"
        assert cache.is_file() and len(json.loads(cache.read_text())) > 0
    assert result.method in config.methods and set(result.parity) == set(config.methods)
    # sensitive layers stay float: the first conv reads the raw float image
    first_conv = sensitive_nodes(onnx_model, ("first_conv",))[0]
    graph = onnx.load(str(result.path)).graph
    node = next(n for n in graph.node if n.name == first_conv)
    assert node.input[0] == "image"
    seg, cls = ort_runner(result.path)(val.images[:2])
    assert seg.shape[0] == 2 and np.isfinite(seg).all() and np.isfinite(cls).all()
    report = check_parity(ort_runner(onnx_model), ort_runner(result.path), val.images, TOLERANCES["int8"])
    assert report.agreement > 0.9


def test_int8_refuses_empty_calibration(onnx_model, tmp_path):
    with pytest.raises(QuantizationError, match="real patches"):
        quantize_int8(onnx_model, tmp_path / "q.onnx", np.zeros((0, 1, 4, 4, 4), np.float32),
                      np.zeros((0, 1, 4, 4, 4), np.float32))


def test_fp16_model_loads_runs_and_keeps_float32_io(onnx_model, patches, tmp_path):
    path = convert_fp16(onnx_model, tmp_path / "model_fp16.onnx")
    session = ort_session(path)
    assert session.get_inputs()[0].type == "tensor(float)"
    assert all(o.type == "tensor(float)" for o in session.get_outputs())
    model = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    report = check_parity(ort_runner(onnx_model), ort_runner(path), patches[1].images, TOLERANCES["fp16"])
    assert report.passed, report.failures


def test_tensorrt_int8_is_symmetric_signed_qdq(onnx_model, patches, tmp_path):
    """TensorRT's ONNX parser takes only symmetric signed INT8 Q/DQ; the onnxruntime target (uint8
    activations with a zero point) fails the same check."""
    from optimize.quantize import check_symmetric_int8, tensorrt_int8

    calib, val = patches
    ort_model = quantize_int8(onnx_model, tmp_path / "ort.onnx", calib.images, val.images,
                              config=Int8Config(methods=("minmax",)), cache_dir=tmp_path / "c_ort").path
    with pytest.raises(QuantizationError, match="not symmetric signed INT8"):
        check_symmetric_int8(ort_model)
    config = tensorrt_int8(Int8Config(methods=("minmax", "percentile")))
    result = quantize_int8(onnx_model, tmp_path / "trt.onnx", calib.images, val.images, config=config,
                           cache_dir=tmp_path / "c_trt")
    assert check_symmetric_int8(result.path) == result.ops["QuantizeLinear"] + result.ops["DequantizeLinear"] > 0
    report = check_parity(ort_runner(onnx_model), ort_runner(result.path), val.images, TOLERANCES["int8"])
    assert report.agreement > 0.85  # random weights; symmetric ranges waste half the code space on ReLU outputs
    with pytest.raises(QuantizationError, match="symmetric signed INT8"):
        Int8Config(target="tensorrt")  # uint8 activations
