"""INT8 profiling: onnxruntime's per-operator profile and the width sweep, on real ONNX sessions."""

from __future__ import annotations

import pytest

from benchmarks.int8_profile import INT8_CONV, op_profile, render, width_sweep


def test_op_profile_attributes_time_to_the_graph_ops(onnx_model, patches) -> None:
    _, val = patches
    prof = op_profile(onnx_model, val.images[:1], threads=1, runs=3)
    assert "Conv" in prof.ms_by_op and prof.ms_by_op["Conv"] > 0
    assert prof.wall_ms > 0 and 0 < prof.kernel_ms <= prof.wall_ms * 1.5


def test_width_sweep_quantizes_and_widens(bundle, patches, tmp_path) -> None:
    train, val = patches
    rows = width_sweep(bundle, train.images, val.images[:1], tmp_path, widths=(1.0, 2.0), runs=2)
    assert [r.width for r in rows] == [1.0, 2.0]
    assert [f * 2 for f in rows[0].features] == rows[1].features
    assert rows[1].params > 2 * rows[0].params
    assert all(r.conv_int8_ms > 0 and r.conv_fp32_ms > 0 for r in rows), "no QLinearConv kernels were profiled"
    a = op_profile(tmp_path / "w1.0_int8.onnx", val.images[:1], runs=1)
    assert any(op in a.ms_by_op for op in INT8_CONV)
    text = render(a, a, rows, header="# t")
    assert "| 2× | " in text and "QLinearConv" in text


def test_op_profile_rejects_a_missing_model(tmp_path, patches) -> None:
    with pytest.raises(Exception, match="No such file|does not exist|NO_SUCHFILE|Load model"):
        op_profile(tmp_path / "missing.onnx", patches[1].images[:1])
