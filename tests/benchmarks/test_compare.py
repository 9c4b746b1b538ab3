"""`pancreas bench compare` end to end on one tiny case, plus its scheduling and scoring rules."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks.candidates import BASELINE, Candidate, EngineRunner, Environment, discover
from benchmarks.compare import Case, _schedule, best_line, find_cases
from pancreas.bundle import Bundle
from pancreas.cli import main
from pancreas.errors import DatasetError, PancreasError
from pancreas.testing import REPO_ROOT, with_inference

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
    assert "torch-compiled-fp32-c2f" in [c.name for c in discover([bundle.root], env=cpu, patterns=["torch-comp*"])]
    gpu = Environment(cuda=True, tensorrt=False, ort_cuda=False)
    on_gpu = [c.name for c in discover([bundle.root], env=gpu)]
    assert {"torch-fp16", "torch-fp16-c2f", "torch-compiled-fp16", "torch-compiled-fp16-c2f"} <= set(on_gpu)
    with pytest.raises(PancreasError, match="no candidate matches"):
        discover([bundle.root], env=cpu, patterns=["nothing*"])


class _FakeWorker:
    """Stands in for a candidate's process: answers runs with a fixed time; can raise Ctrl-C on a run."""

    interrupt_on: int | None = None
    calls = 0

    def __init__(self, candidate: dict, warm: str, *, timeout_s: float) -> None:
        self.name, self.timeout_s = candidate["name"], timeout_s
        self.process = type("P", (), {"is_alive": staticmethod(lambda: True)})()

    def ready(self) -> dict:
        return {"ok": True, "load_s": 0.0, "warmup_s": 0.0, "info": {}}

    def run(self, image: str, output: str) -> dict:
        type(self).calls += 1
        if type(self).calls == self.interrupt_on:
            raise KeyboardInterrupt
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.replace("_0000.nii.gz", ".nii.gz"), output)  # the ground truth as the mask
        ms = 30_000.0 if self.name == BASELINE else 100.0
        return {"ok": True, "total_ms": ms, "stages_ms": {"inference": ms}, "peak_rss_mb": 1.0,
                "rss_method": "fake", "gpu_peak_mb": None}

    def close(self) -> None:
        pass


def _progress_run(monkeypatch, tmp_path: Path, case_writer, *, deadline: float | None, interrupt_on: int | None):
    import benchmarks.candidate_worker
    from benchmarks.compare import CompareConfig, _Progress, _run_all, _Scores

    monkeypatch.setattr(benchmarks.candidate_worker, "Worker", _FakeWorker)
    monkeypatch.setattr(_FakeWorker, "calls", 0)
    monkeypatch.setattr(_FakeWorker, "interrupt_on", interrupt_on)
    for name in ("a_001", "b_002"):
        case_writer(tmp_path / "cases", name, (8, 16, 16))
    cases = find_cases(tmp_path / "cases")
    cands = [Candidate(BASELINE, "nnunet", "x", repeats=1), Candidate("fast", "engine", "x")]
    cfg = CompareConfig(bundles=("x",), cases=str(tmp_path / "cases"), out=str(tmp_path), repeats=3,
                        deadline=deadline)
    progress = _Progress(setup={}, runs=[], skipped=[], scores=_Scores(cases))
    updates: list[int] = []
    _run_all(cfg, cands, cases, tmp_path / "masks", progress, on_run=lambda: updates.append(len(progress.runs)))
    return progress, updates


def test_run_all_leaves_out_runs_past_the_deadline(monkeypatch, tmp_path: Path, case_writer) -> None:
    import time

    progress, updates = _progress_run(monkeypatch, tmp_path, case_writer, deadline=time.time() + 20,
                                      interrupt_on=None)
    done = [(r["candidate"], r["case"]) for r in progress.runs]
    # the baseline took 30 s (fake) on a_001: expected about as long on b_002, which no longer fits
    assert (BASELINE, "a_001") in done and (BASELINE, "b_002") not in done
    assert any(k["candidate"] == BASELINE and "time budget" in k["reason"] for k in progress.skipped)
    assert sum(c == "fast" for c, _ in done) == 6  # every repeat of the fast candidate still ran
    assert updates == list(range(1, len(progress.runs) + 1))  # reported after every run
    assert progress.scores.scores[("fast", "a_001")]["agreement"]["whole"] == 1.0
    assert len((tmp_path / "compare.runs.jsonl").read_text().splitlines()) == len(progress.runs)


def test_run_all_reports_what_finished_when_interrupted(monkeypatch, tmp_path: Path, case_writer) -> None:
    progress, _ = _progress_run(monkeypatch, tmp_path, case_writer, deadline=None, interrupt_on=3)
    assert len(progress.runs) == 2 and "_interrupted" in progress.setup


def test_bf16_rows_where_bf16_is_native_and_mirrored_torch_on_request(bundle) -> None:
    """torch bf16 autocast rows (the demo bundle's default on such CPUs) run on a CPU with native bf16 or a GPU;
    the mirrored torch fp32 row only when --candidates names it."""
    plain = Environment(cuda=False, tensorrt=False, ort_cuda=False)
    native = Environment(cuda=False, tensorrt=False, ort_cuda=False, cpu_bf16=True)
    assert not [c for c in discover([bundle.root], env=plain) if "bf16" in c.name]
    rows = {c.name: c.options for c in discover([bundle.root], env=native) if "bf16" in c.name}
    assert set(rows) == {"torch-bf16", "torch-bf16-tta"}
    assert all(o["precision"] == "bf16" and o["device"] == "cpu" for o in rows.values())
    assert rows["torch-bf16-tta"]["tta"] and not rows["torch-bf16"]["tta"]
    gpu = Environment(cuda=True, tensorrt=False, ort_cuda=False)
    assert {"torch-bf16", "torch-bf16-tta", "torch-fp32-tta"} <= {c.name for c in discover([bundle.root], env=gpu)}
    asked = discover([bundle.root], env=plain, patterns=["torch-fp32-tta"])
    assert [c.name for c in asked] == ["nnunet-default", "torch-fp32-tta"] and asked[1].options["tta"]


def test_a_bundle_with_multi_scale_tta_gets_a_one_scale_row(bundle, tmp_path: Path) -> None:
    """Engine rows follow the bundle's ``inference.scales``; one extra mirrored bf16 row runs one scale, and only
    where the bundle records several."""
    root = with_inference(bundle, tmp_path / "scaled", scales=[1.0, 1.25]).root
    native = Environment(cuda=False, tensorrt=False, ort_cuda=False, cpu_bf16=True)
    rows = {c.name: c.options for c in discover([root], env=native)}
    assert rows["torch-bf16-tta-1scale"]["scales"] == [1.0] and rows["torch-bf16-tta-1scale"]["tta"]
    assert "scales" not in rows["torch-bf16-tta"]  # the bundle's own scales
    assert "torch-bf16-tta-1scale" not in {c.name for c in discover([bundle.root], env=native)}
    runner = EngineRunner(Bundle.load(root), {"backend": "torch", "device": "cpu", "scales": [1.0]})  # JSON options
    assert runner.info["scales"] == [1.0] and EngineRunner(Bundle.load(root), {"device": "cpu"}).info["scales"] == [1.0, 1.25]


def test_ort_rows_only_where_cuda_provider_runs() -> None:
    demo = REPO_ROOT / "pancreas" / "demo_bundle"
    no_ort = Environment(cuda=True, tensorrt=False, ort_cuda=False)
    assert not [c for c in discover([demo], env=no_ort) if c.name.startswith("ort-")]
    ort = Environment(cuda=True, tensorrt=False, ort_cuda=True)
    rows = [c for c in discover([demo], env=ort) if c.name.startswith("ort-")]
    assert rows and all(c.options["device"] == "cuda" for c in rows)
    cpu = Environment(cuda=False, tensorrt=False, ort_cuda=False)
    on_cpu = [c for c in discover([demo], env=cpu) if c.name.startswith("ort-")]
    assert all(c.options["device"] == "cpu" for c in on_cpu)
    # one mirrored row, the like-for-like match of nnunet-default; every other row runs without TTA
    assert {c.name: c.options["tta"] for c in on_cpu if c.options["tta"]} == {"ort-fp32-tta": True}


def test_one_mirrored_axis_rows_on_request(bundle) -> None:
    """The one-axis mirroring rows run when --candidates names them (on a GPU always), with mirror_axes [2]."""
    native = Environment(cuda=False, tensorrt=False, ort_cuda=False, cpu_bf16=True)
    assert not [c for c in discover([bundle.root], env=native) if c.name.endswith("-tta-x")]
    asked = {c.name: c.options for c in discover([bundle.root], env=native, patterns=["*-tta-x"])}
    assert set(asked) == {"nnunet-default", "torch-fp32-tta-x", "torch-bf16-tta-x"}
    assert asked["torch-fp32-tta-x"]["mirror_axes"] == [2] and asked["torch-fp32-tta-x"]["tta"]
    gpu = Environment(cuda=True, tensorrt=False, ort_cuda=False)
    assert {"torch-fp32-tta-x", "torch-bf16-tta-x"} <= {c.name for c in discover([bundle.root], env=gpu)}
    runner = EngineRunner(bundle, {"backend": "torch", "device": "cpu", "tta": True, "mirror_axes": [2]})
    assert runner.info["mirror_axes"] == [2]
