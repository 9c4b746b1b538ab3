"""The image's entrypoint command, run outside Docker on CPU: healthy service, a phantom answered, clean stop.

This runs exactly what the containers run (``ENTRYPOINT ["python", "/opt/pancreas/entrypoint.py"]`` +
``CMD ["serve"]``, configured by ``PANCREAS_*`` variables), only with this checkout's path to the script
and a free port on 127.0.0.1. The bundle is the packaged demo bundle (the images' default) when it exists,
else a random-init tiny bundle; on this CPU machine the entrypoint must log why it builds no TensorRT engine.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.testing import REPO_ROOT, ServerProcess, clean_env, free_port

REPO = REPO_ROOT
ENTRYPOINT = REPO / "docker" / "entrypoint.py"
START_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def bundle_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from pancreas.bundle import default_bundle_path

    if (default_bundle_path() / "configs" / "metadata.json").is_file():
        return {}  # like the images: no PANCREAS_BUNDLE -> the packaged demo bundle
    from pancreas.testing import make_random_bundle

    root = tmp_path_factory.mktemp("bundle") / "random-tiny"
    make_random_bundle(root, seed=0)
    return {"PANCREAS_BUNDLE": str(root)}


@pytest.fixture(scope="module")
def container(bundle_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("entrypoint")
    port = free_port()
    env = clean_env(HOST="127.0.0.1", PORT=port, ENGINE_CACHE=work / "engines", TMP_DIR=work, NUM_THREADS=2,
                    GRACEFUL_SHUTDOWN_S=30)
    env.update(bundle_env)
    server = ServerProcess([sys.executable, str(ENTRYPOINT), "serve"], f"http://127.0.0.1:{port}", env=env,
                           log=work / "entrypoint.log", cwd=work).start()
    try:
        healthy_s = server.wait_ready(START_TIMEOUT_S, path="/healthz")
        ready_s = server.wait_ready(START_TIMEOUT_S, path="/readyz")
        yield {"proc": server.process, "url": server.url, "log": server.log, "env": env, "work": work,
               "healthy_s": healthy_s, "ready_s": ready_s}
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


def test_entrypoint_execs_pancreas_serve_and_logs_its_decision(container: dict) -> None:
    proc, log = container["proc"], container["log"].read_text(errors="replace")
    assert "engine decision: serve-as-is" in log, log
    assert "no CUDA GPU" in log or "TensorRT is not installed" in log, log
    # exec, not a child process: in Docker, SIGTERM to PID 1 must reach uvicorn itself.
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline and b"pancreas" in cmdline, cmdline


def test_healthcheck_command_passes(container: dict) -> None:
    env = {**container["env"]}
    result = subprocess.run([sys.executable, str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_phantom_request_returns_a_mask_on_the_input_grid(container: dict) -> None:
    from pancreas.phantoms import make_case

    case = make_case(seed=3, subtype=1, shape="crop", headers="varied")
    path = container["work"] / "case_0000.nii.gz"
    case.write(path)
    with open(path, "rb") as f:
        response = httpx.post(f"{container['url']}/v1/predict", files={"file": ("case.nii.gz", f,
                                                                                  "application/gzip")},
                              timeout=300.0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subtype"] in (0, 1, 2)
    assert body["model"]["backend"] in ("onnxruntime", "torch")
    mask_path = container["work"] / "mask.nii.gz"
    mask_path.write_bytes(base64.b64decode(body["mask"]))
    image, mask = sitk.ReadImage(str(path)), sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-5)
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1, 2}


def test_compose_load_generator_script_runs_against_it(container: dict) -> None:
    """docker/loadtest.sh (the compose `locust` services' entrypoint): synth payloads, then headless locust."""
    work = container["work"] / "loadtest"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANCREAS_", "LOCUST_"))}
    env.update(LOCUST_HOST=container["url"], LOCUST_HEADLESS="true", LOCUST_USERS="1", LOCUST_SPAWN_RATE="1",
               LOCUST_RUN_TIME="6s", LOCUST_STOP_TIMEOUT="120", LOCUST_CSV=str(work / "locust"),
               LOCUST_ONLY_SUMMARY="true", LOADTEST_SIZES="crop", PANCREAS_LOCUST_PAYLOADS=str(work / "payloads"),
               LOCUSTFILE=str(REPO / "benchmarks" / "locustfile.py"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    result = subprocess.run(["/bin/sh", str(REPO / "docker" / "loadtest.sh")], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (work / "payloads" / "crop").rglob("*_0000.nii.gz"))
    assert (work / "locust_stats.csv").is_file()
    # locust's end-of-run summary counts the requests that finished during --stop-timeout (its CSV, written
    # when --run-time expires, may not): "Aggregated  <requests>  <failures>(<pct>%) | ..."
    summary = re.search(r"^\s*Aggregated\s+(\d+)\s+(\d+)\(", result.stdout + result.stderr, re.MULTILINE)
    assert summary, result.stdout[-3000:] + result.stderr[-3000:]
    assert int(summary.group(1)) >= 1 and int(summary.group(2)) == 0, summary.group(0)


def test_sigterm_shuts_down_gracefully(container: dict) -> None:
    proc = container["proc"]
    proc.send_signal(signal.SIGTERM)
    # uvicorn drains, shuts the app down, then re-raises the signal it caught: exit status 0 or -SIGTERM
    # (143 in Docker under `init: true`), both after a complete graceful shutdown.
    assert proc.wait(60) in (0, -signal.SIGTERM)
    log = container["log"].read_text(errors="replace")
    assert "Application shutdown complete" in log and "Finished server process" in log, log
