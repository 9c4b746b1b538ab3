"""The optimize benchmark's derived numbers: Done-when ratios and the commands recorded per row."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.optimize_bench import build_command, built_with, done_when_notes
from benchmarks.optimize_report import VariantRow


def _row(name: str, backend: str, precision: str, case_ms: float, whole: float, lesion: float) -> VariantRow:
    return VariantRow(name=name, command="c", backend=backend, precision=precision, size_mb=1.0, params=1,
                      gflops_per_patch=1.0, whole_dsc=whole, lesion_dsc=lesion, macro_f1=0.9, ms_per_patch=10.0,
                      ms_per_case=case_ms, ms_network_per_case=case_ms - 40)


def test_notes_compute_ratios_and_deltas_from_the_rows() -> None:
    rows = [_row("teacher", "torch", "fp32", 400, 0.91, 0.75), _row("onnx-int8", "onnxruntime", "fp32", 600, 0.91, 0.75),
            _row("onnx-int8", "onnxruntime", "int8", 500, 0.912, 0.74),
            _row("pruned-0.3-nnunet", "onnxruntime", "fp32", 300, 0.90, 0.70)]
    text = done_when_notes(rows)
    assert "INT8 vs FP32 onnxruntime per case: 1.20× (600 → 500 ms; sliding window alone 1.22×" in text
    assert "whole DSC +0.0020, lesion DSC -0.0100" in text
    assert "pruned-0.3-nnunet vs teacher (onnxruntime fp32) per case: 2.00× (600 → 300 ms" in text
    assert "whole DSC -0.0100, lesion DSC -0.0500" in text
    assert "pruned-0.3-nnunet vs teacher (torch" not in text  # no torch row for it: no line invented


def test_commands_name_the_fine_tune_loop(tmp_path: Path) -> None:
    patch_loop = build_command(Path("b"), "prune:0.3,onnx", Path("d"), 1000, Path("o"))
    nnunet = build_command(Path("b"), "prune:0.3,onnx", Path("d"), None, Path("o"))
    assert "--steps 1000" in patch_loop and "--finetune-dataset" not in patch_loop
    assert "--finetune-dataset 501" in nnunet and "--steps" not in nnunet
    (tmp_path / "configs").mkdir()
    meta = tmp_path / "configs" / "metadata.json"
    meta.write_text(json.dumps({"provenance": {"command": "pancreas optimize x --finetune-dataset 501"}}))
    assert built_with(tmp_path) == "pancreas optimize x --finetune-dataset 501"
    meta.write_text(json.dumps({"provenance": {"command": "pancreas optimize x --steps 5"}}))
    assert built_with(tmp_path) == "OMP_NUM_THREADS=1 pancreas optimize x --steps 5"
    assert built_with(tmp_path / "missing") is None
