"""`pancreas bench compare` end to end on one tiny case, plus its scheduling and scoring rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.candidates import BASELINE, Candidate, Environment, discover
from benchmarks.compare import Case, _schedule, best_line, find_cases
from pancreas.cli import main
from pancreas.errors import DatasetError, PancreasError

BEST = re.compile(r"^best: (\S+) is (\d+\.\d)× faster end to end than nnU-Net v2 default \(DSC change [+-]\d\.\d{3}\)")


def test_compare_cli_writes_json_markdown_png(bundle, case_writer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cases = tmp_path / "cases" / "subtype0"
    case_writer(cases, "quiz_0_001", (16, 32, 32), seed=3)  # quiz layout, one patch
    out = tmp_path / "results"
    rc = main(["bench", "compare", "--model", str(bundle.root), "--cases", str(tmp_path / "cases"), "--out", str(out),
               "--name", "tiny", "--repeats", "1", "--candidates", "torch-fp32", "--masks", str(tmp_path / "masks")])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert BEST.match(printed[-1]), printed[-1]

    result = json.loads((out / "tiny.json").read_text())
    assert [s["candidate"] for s in result["summary"]] == [BASELINE, "torch-fp32"]
    assert result["machine"]["cpu"] and result["machine"]["versions"]["torch"]
    assert not result["failures"]
    for row in result["rows"]:
        assert row["case"] == "quiz_0_001" and row["shape"] == [16, 32, 32] and row["repeats"] == 1
        assert row["total_ms"] > 0 and row["stages_ms"] and all(v >= 0 for v in row["stages_ms"].values())
        assert sum(row["stages_ms"].values()) <= row["total_ms"] * 1.05
        assert row["peak_rss_mb"] > 50  # a process with torch loaded
        assert row["gpu_peak_mb"] is None
        assert 0 <= row["dsc"]["whole"] <= 1 and 0 <= row["dsc"]["lesion"] <= 1
        assert 0 <= row["agreement"]["whole"] <= 1
    base = next(r for r in result["rows"] if r["candidate"] == BASELINE)
    assert base["agreement"]["whole"] == 1.0
    assert set(base["stages_ms"]) == {"read_preprocess", "sliding_window", "resample_export"}
    assert result["setup"]["torch-fp32"]["info"]["backend"] == "torch"
    assert BEST.match(result["best_line"]) and result["best"] == "torch-fp32"

    md = (out / "tiny.md").read_text()
    assert "| nnunet-default |" in md and "| torch-fp32 |" in md and result["best_line"] in md
    assert result["machine"]["cpu"] in md and "tiny.png" in md
    assert (out / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "masks" / "torch-fp32" / "quiz_0_001.nii.gz").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.md", "tiny.png", "tiny.runs.jsonl"]


def test_find_cases_quiz_and_flat(case_writer, tmp_path: Path) -> None:
    case_writer(tmp_path / "quiz" / "subtype1", "quiz_1_002", (8, 16, 16))
    (flat := tmp_path / "flat").mkdir()
    case_writer(flat, "a_001", (8, 16, 16))
    (flat / "a_001.nii.gz").unlink()  # image without mask
    (quiz,) = find_cases(tmp_path / "quiz")
    assert quiz.case_id == "quiz_1_002" and quiz.mask and quiz.shape == (8, 16, 16)
    (plain,) = find_cases(flat)
    assert plain.mask is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no \\*_0000.nii.gz"):
        find_cases(tmp_path / "empty")
    with pytest.raises(DatasetError, match="is not a folder"):
        find_cases(tmp_path / "missing")


def test_schedule_alternates_and_rotates() -> None:
    a, b = Candidate("a", "engine", "x"), Candidate("b", "nnunet", "x", repeats=1)
    cases = [Case("c1", "i1", None, (1, 1, 1)), Case("c2", "i2", None, (1, 1, 1))]
    plan = [(r, case.case_id, c.name) for r, case, c in _schedule([a, b], cases, 3)]
    assert plan == [(0, "c1", "a"), (0, "c1", "b"), (0, "c2", "a"), (0, "c2", "b"),
                    (1, "c1", "a"), (1, "c2", "a"), (2, "c1", "a"), (2, "c2", "a")]
    c = Candidate("c", "engine", "x")
    assert [cand.name for _, _, cand in _schedule([a, c], cases[:1], 2)] == ["a", "c", "c", "a"]


@pytest.mark.parametrize(("rows", "expected"), [
    ([("fast-bad", 10.0, 0.70), ("slow-good", 6.0, 0.905)], "best: slow-good is 6.0×"),
    ([("fast-good", 10.0, 0.895), ("slow-good", 6.0, 0.90)], "best: fast-good is 10.0×"),
    ([("only-bad", 10.0, 0.5)], "best: only-bad is 10.0×"),
])
def test_best_respects_dsc_tolerance(rows: list[tuple[str, float, float]], expected: str) -> None:
    summary = [{"candidate": BASELINE, "speedup": 1.0, "dsc_whole": 0.90}]
    summary += [{"candidate": n, "speedup": s, "dsc_whole": d} for n, s, d in rows]
    _, line = best_line(summary)
    assert line.startswith(expected)
    assert ("no candidate within" in line) == (rows[0][0] == "only-bad")


def test_discover_skips_what_cannot_run(bundle) -> None:
    cpu = Environment(cuda=False, tensorrt=False, ort_cuda=False)
    names = [c.name for c in discover([bundle.root], env=cpu)]
    assert names == ["nnunet-default", "nnunet-no-tta", "torch-fp32", "torch-fp32-c2f"]  # no ONNX, no GPU
    assert "torch-compiled-c2f" in [c.name for c in discover([bundle.root], env=cpu, patterns=["torch-comp*"])]
    gpu = Environment(cuda=True, tensorrt=False, ort_cuda=False)
    assert "torch-fp16-c2f" in [c.name for c in discover([bundle.root], env=gpu)]
    with pytest.raises(PancreasError, match="no candidate matches"):
        discover([bundle.root], env=cpu, patterns=["nothing*"])
