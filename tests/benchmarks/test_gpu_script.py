"""`benchmarks/gpu/run.sh` in CPU mode: refuses without a GPU unless asked, then runs with GPU parts skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "run.sh"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    return {**env, "PYTHON": sys.executable, "BENCH_WORK": str(tmp_path / "work"),
            "BENCH_RESULTS": str(tmp_path / "results"), **extra}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_run_sh_refuses_cpu_unless_allowed(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], check=False, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "BENCH_ALLOW_CPU=1" in proc.stderr


@pytest.mark.slow
def test_run_sh_cpu_smoke(coarse_bundle, tmp_path: Path) -> None:
    env = _env(tmp_path, BENCH_ALLOW_CPU="1", BENCH_MODEL=str(coarse_bundle.root), BENCH_FULL="0", BENCH_CROP="1",
               BENCH_REPEATS="1", BENCH_CANDIDATES="torch-fp32 torch-fp16*", BENCH_TIMEOUT="600")
    proc = subprocess.run(["bash", str(SCRIPT)], check=False, env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| candidate |") and lines[-1].startswith("best: torch-fp32 is ")
    assert sum(line.startswith("| nnunet-default |") for line in lines) == 1
    assert not any("fp16" in line for line in lines)  # GPU-only candidate skipped on CPU
    (md,) = (tmp_path / "results").glob("cpu-smoke-*.md")
    assert "no GPU" in md.read_text() and md.with_suffix(".png").is_file()
