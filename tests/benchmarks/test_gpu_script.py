"""The one-shot GPU benchmark: run.sh (CPU mode), its cases and networks, the time budget, the carry plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from benchmarks.compare import _sigterm_as_interrupt
from benchmarks.gpu import prepare_wheels
from benchmarks.gpu.archs import arch_bundle
from benchmarks.gpu.cases import CASES, write_case
from benchmarks.report import STAGE_GROUPS, stage_table
from pancreas.testing import REPO_ROOT

REPO = REPO_ROOT
SCRIPT = REPO / "benchmarks" / "gpu" / "run.sh"
UNPACK = REPO / "benchmarks" / "gpu" / "unpack.sh"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    return {**env, "PYTHON": sys.executable, "BENCH_WORK": str(tmp_path / "work"),
            "BENCH_RESULTS": str(tmp_path / "results"), "BENCH_STASH": str(tmp_path / "stash"), **extra}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_run_sh_refuses_cpu_unless_allowed(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT)], check=False, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "BENCH_ALLOW_CPU=1" in proc.stderr


@pytest.mark.slow
def test_run_sh_cpu_smoke(coarse_bundle, tmp_path: Path) -> None:
    """End to end on CPU: both phases (bundle, random network), per-case tables on stdout, files in BENCH_RESULTS."""
    env = _env(tmp_path, BENCH_ALLOW_CPU="1", BENCH_MODEL=str(coarse_bundle.root), BENCH_ARCH="small",
               BENCH_CASES="tiny", BENCH_REPEATS="2", BENCH_CANDIDATES="torch-fp32 torch-fp16*", BENCH_TIMEOUT="600")
    proc = subprocess.run(["bash", str(SCRIPT)], check=False, env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    phases = [line for line in out.splitlines() if line.startswith("## ")]
    assert phases == [f"## {coarse_bundle.root.name}", "## arch-small"]
    assert out.count("| tiny 24×40×56 | torch-fp32 |") == 2 and out.count("| tiny 24×40×56 | nnunet-default |") == 2
    assert out.count("best: torch-fp32 is ") == 2
    assert "fp16" not in out  # GPU-only candidates skipped on CPU
    results = tmp_path / "results"
    (md,) = results.glob("cpu-smoke-*.md")
    doc = json.loads(md.with_suffix(".json").read_text())
    assert list(doc["phases"]) == [coarse_bundle.root.name, "arch-small"]
    for res in doc["phases"].values():
        (row,) = [r for r in res["rows"] if r["candidate"] == "torch-fp32"]
        assert row["repeats"] == 2 and row["agreement"]["whole"] is not None
    assert "no GPU" in md.read_text() and md.with_suffix(".log").is_file()
    assert len(list(results.glob("cpu-smoke-*-arch-small.png"))) == 1
    assert len(list(results.iterdir())) <= 8  # what a device run can bring back


def test_cases_have_exact_grids(tmp_path: Path) -> None:
    image = write_case(tmp_path, "tiny", seed=1)
    img, mask = sitk.ReadImage(str(image)), sitk.ReadImage(str(tmp_path / "tiny.nii.gz"))
    spec = CASES["tiny"]
    assert img.GetSize()[::-1] == spec.shape and mask.GetSize() == img.GetSize()
    assert img.GetSpacing()[::-1] == pytest.approx(spec.spacing)
    assert img.GetPixelID() == sitk.sitkInt16 and mask.GetPixelID() == sitk.sitkUInt8
    assert set(sitk.GetArrayViewFromImage(mask).ravel().tolist()) <= {0, 1, 2}
    assert sitk.GetArrayViewFromImage(mask).any()  # the pancreas is inside the grid
    assert CASES["crop"].shape == (64, 119, 178) and CASES["full111"].shape == (111, 512, 512)


def test_arch_bundle_is_cached_and_sized(tmp_path: Path) -> None:
    small = arch_bundle(tmp_path / "small", "small")
    assert arch_bundle(tmp_path / "small", "small").root == small.root
    nnunet = arch_bundle(tmp_path / "nnunet", "nnunet")
    arch = nnunet.plans["configurations"]["3d_fullres"]
    assert arch["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert arch["patch_size"] == [64, 128, 192]


def test_sigterm_raises_keyboard_interrupt_inside_compare() -> None:
    with pytest.raises(KeyboardInterrupt), _sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler


def test_stage_table_groups_both_pipelines() -> None:
    rows = [{"candidate": "nnunet-default", "case": "c", "shape": [1, 2, 3], "total_ms": 8000.0,
             "stages_ms": {"read_preprocess": 2000.0, "sliding_window": 5000.0, "resample_export": 1000.0},
             "agreement": {"whole": 1.0}, "gpu_peak_mb": 900.0},
            {"candidate": "nnunet-no-tta", "case": "c", "shape": [1, 2, 3], "total_ms": 4000.0,
             "stages_ms": {"read_preprocess": 2000.0, "sliding_window": 1000.0, "resample_export": 1000.0},
             "agreement": {"whole": 0.95}, "gpu_peak_mb": 900.0},
            {"candidate": "torch-fp16-c2f", "case": "c", "shape": [1, 2, 3], "total_ms": 1000.0,
             "stages_ms": {"read": 100.0, "coarse": 200.0, "preprocess": 100.0, "inference": 400.0,
                           "resample_back": 100.0, "export": 50.0, "postprocess": 25.0, "write": 25.0},
             "agreement": {"whole": 0.9}, "gpu_peak_mb": 300.0}]
    lines = stage_table({"rows": rows, "cases": [{"case_id": "c"}]})
    assert len(lines) == 5 and all(g in lines[0] for g in STAGE_GROUPS)
    assert lines[2].startswith("| c 1×2×3 | torch-fp16-c2f | 1.00 | 0.20 | 0.20 | 0.40 | 0.20 | 8.0 | 4.0 | 300 |")
    assert lines[4].startswith("| c 1×2×3 | nnunet-default | 8.00 | 2.00 | 0.00 | 5.00 | 1.00 | 1.0 | 0.5 |")


def _wheel(folder: Path, name: str, payload: bytes) -> Path:
    """A minimal valid pure-Python wheel with one module holding ``payload`` (a real file's bytes)."""
    dist = f"{name}-1.0.dist-info"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}.py": b"DATA = " + repr(payload[:64]).encode() + b"\n", f"{name}_blob.bin": payload,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{k},,\n" for k in [*files, f"{dist}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def test_carry_split_and_unpack_round_trip(tmp_path: Path) -> None:
    """Real files, split into three parts, carried one call at a time, installed once all are there."""
    wheels = tmp_path / "dest" / "wheels"
    wheels.mkdir(parents=True)
    weights = min((REPO / "pancreas" / "demo_bundle" / "models").glob("*.pt"))
    blobs = [weights, REPO / "pancreas" / "engine.py"]
    made = [_wheel(wheels, f"carrytest{i}", b.read_bytes()) for i, b in enumerate(blobs)]
    archive = prepare_wheels.pack(made, tmp_path / "dest" / "wheels.tar.xz", preset=0)
    part_bytes = archive.stat().st_size // 3 + 1
    parts = prepare_wheels.split(archive, tmp_path / "dest", part_bytes, {"wheels": {w.name: "" for w in made}})
    assert len(parts) == 3 and all(p.stat().st_size <= part_bytes for p in parts)
    calls = prepare_wheels.device_calls(parts, root=tmp_path / "dest")
    assert [c["carry"] for c in calls] == [["carry-1"], ["carry-2"], ["carry-3"]]
    assert "run.sh" in calls[-1]["command"] and "unpack.sh" in calls[0]["command"]

    site = tmp_path / "site"
    for i, part in enumerate(parts):  # each device call sees only its own part under .whl/
        repo = tmp_path / f"call{i}"
        (repo / "benchmarks" / "gpu").mkdir(parents=True)
        (repo / "benchmarks" / "gpu" / "unpack.sh").write_text(UNPACK.read_text())
        (repo / ".whl").mkdir()
        os.symlink(part.parent, repo / ".whl" / part.parent.name)
        proc = subprocess.run(["bash", str(repo / "benchmarks" / "gpu" / "unpack.sh")], check=False,
                              env={**_env(tmp_path), "BENCH_SITE": str(site)}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == (0 if i == 2 else 10), proc.stderr
    assert (site / "carrytest0_blob.bin").read_bytes() == blobs[0].read_bytes()
    assert (site / "carrytest1_blob.bin").read_bytes() == blobs[1].read_bytes()
    assert (site / "carrytest1-1.0.dist-info").is_dir()


def test_split_refuses_when_the_tree_fills_the_call(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.xz"
    archive.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="no room for wheels"):
        prepare_wheels.split(archive, tmp_path, 0, {})


@pytest.mark.slow  # imports nnunetv2 and torch in a probe process (~40 s on a busy 2-core box)
def test_carry_list_is_what_the_image_lacks() -> None:
    need = prepare_wheels.needed()
    assert {"nnunetv2", "simpleitk", "nibabel", "blosc2", "pydantic", "pydantic-core", "acvl-utils"} <= set(need)
    assert not set(need) & (prepare_wheels.IMAGE_HAS | {"torch", "pancreas-mtl", "torchvision"})
