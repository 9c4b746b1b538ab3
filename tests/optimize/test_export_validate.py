"""ONNX export and the parity gate, with real onnxruntime sessions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from optimize.export_onnx import INPUT_NAME, OUTPUT_NAMES, onnx_info
from optimize.runners import ort_runner, torch_runner
from optimize.validate import ParityError, ParityTolerance, check_parity, parity_gate


def test_export_has_named_io_fixed_patch_and_dynamic_batch(onnx_model, patches, patch_size):
    model = onnx.load(str(onnx_model))
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert tuple(o.name for o in model.graph.output) == OUTPUT_NAMES
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, *patch_size]
    seg, cls = ort_runner(onnx_model)(patches[1].images[:3])
    assert seg.shape == (3, 3, *patch_size) and cls.shape == (3, 3)
    assert onnx_info(onnx_model)["ops"]["Conv"] > 0


def test_parity_gate_passes_on_export(net, onnx_model, patches):
    report = parity_gate(torch_runner(net), ort_runner(onnx_model), patches[1].images, what="model.onnx")
    assert report.passed and report.agreement >= 0.999 and report.cls_max_abs_diff <= 1e-3


def _break(model_path, out):
    """Negate the final segmentation conv and shift the class logits: two independent failures."""
    model = onnx.load(str(model_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    seg_conv = producer[OUTPUT_NAMES[0]]
    cls_gemm = producer[OUTPUT_NAMES[1]]
    inits = {i.name: i for i in model.graph.initializer}
    for name, fn in ((seg_conv.input[1], lambda w: -5 * w), (cls_gemm.input[2], lambda b: b + np.arange(b.size) * 3)):
        arr = onnx.numpy_helper.to_array(inits[name]).astype(np.float32)
        inits[name].CopyFrom(onnx.numpy_helper.from_array(fn(arr).astype(np.float32), name))
    onnx.save(model, str(out))
    return out


def test_parity_gate_collects_every_failure(net, onnx_model, patches, tmp_path):
    broken = _break(onnx_model, tmp_path / "broken.onnx")
    with pytest.raises(ParityError) as info:
        parity_gate(torch_runner(net), ort_runner(broken), patches[1].images, what="broken.onnx")
    message = str(info.value)
    assert "voxel argmax agreement" in message and "class logits differ" in message
    assert info.value.code == "parity_failed"


def test_check_parity_reports_shape_mismatch(net, patches):
    x = patches[1].images[:2]
    report = check_parity(torch_runner(net), lambda p: (np.zeros((len(p), 3, 2, 2, 2), np.float32),
                                                        np.full((len(p), 3), np.nan, np.float32)),
                          x, ParityTolerance())
    assert not report.passed
    assert any("seg_logits shape" in f for f in report.failures)
    assert any("non-finite" in f for f in report.failures)
