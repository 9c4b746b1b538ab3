"""``pancreas bench load``: start the service, run locust headless against it, collect latency and errors.

:func:`load_test` starts ``pancreas serve`` on a free port (unless ``host`` is given), waits for ``/readyz``,
runs ``locust -f benchmarks/locustfile.py --headless`` with the given users / spawn rate / duration,
reads locust's CSV (p50/p95/p99, requests/s, failures; ``503 queue full`` counted apart) and the service's
``/metrics`` before and after (stage histograms → count, mean and p50/p95/p99 estimates; errors by code),
optionally repeats past capacity (many users, tiny queue) to show the 503 behaviour, stops everything it
started (also on errors and Ctrl-C), and writes ``<out>/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadmetrics import metrics_delta, scrape_metrics
from pancreas.errors import PancreasError

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CACHE = Path(os.environ.get("PANCREAS_BENCH_CACHE", Path.home() / ".cache" / "pancreas-bench"))


@dataclass(frozen=True)
class LoadConfig:
    """Options of :func:`load_test`."""

    bundle: str | None = None
    host: str | None = None  # an already running service; None: start one
    users: int = 4
    spawn_rate: float = 2.0
    duration: str = "60s"
    sizes: tuple[str, ...] = ("crop", "full")
    queue_size: int | None = None
    request_timeout_s: float | None = None  # PANCREAS_REQUEST_TIMEOUT_S of the started service
    payloads: str | None = None
    out: str = "benchmarks/results"
    name: str = "load"
    overload_users: int = 0  # >0: a second run past capacity
    overload_queue_size: int = 1
    overload_duration: str = "20s"
    ready_timeout_s: float = 300.0
    seed: int = 0
    command: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``pancreas serve`` in a subprocess on a free port; a context manager that always stops it."""

    def __init__(self, bundle: str | None, *, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._cmd = [sys.executable, "-m", "pancreas", "serve", "--port", str(self.port)]
        if bundle:
            self._cmd += ["--model", str(bundle)]
        self._env = {**os.environ, **(env or {})}
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServiceProcess:  # noqa: PYI034
        out = open(self._log, "wb") if self._log else subprocess.DEVNULL
        self.process = subprocess.Popen(self._cmd, env=self._env, stdout=out, stderr=subprocess.STDOUT)
        logger.info("started %s (pid %d)", " ".join(self._cmd), self.process.pid)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise PancreasError(f"the service exited with code {self.process.returncode} before it was ready; "
                                    f"see {self._log or 'its output'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise PancreasError(f"the service at {self.url} was not ready within {timeout_s:.0f} s")

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process)


def stop_process(proc: subprocess.Popen[Any] | None, grace_s: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL; only the process we started."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def make_payloads(sizes: tuple[str, ...], *, seed: int = 0, folder: Path | None = None) -> Path:
    """One phantom per size (``crop``/``full``), made once and cached under ``folder``."""
    from benchmarks.phantom_cases import SIZES, write_cases

    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise PancreasError(f"payload sizes {bad} are not known; use {SIZES}")
    root = folder or CACHE / f"payloads-seed{seed}"
    write_cases(root, crop=int("crop" in sizes), full=int("full" in sizes), seed=seed)
    return root


def run_locust(host: str, payloads: Path, *, users: int, spawn_rate: float, duration: str,
               csv_prefix: Path) -> dict[str, Any]:
    """Run locust headless; return client-side stats from the request log (and locust's CSV, kept as ``csv``).

    Locust writes its CSV when the run time is up; requests that finish during ``--stop-timeout`` are
    missing there. The locustfile logs every finished request, so the log is the complete record.
    """
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
           str(spawn_rate), "-t", duration, "--csv", str(csv_prefix), "--host", host, "--only-summary",
           "--stop-timeout", "600", "--loglevel", "WARNING"]
    log = Path(f"{csv_prefix}_requests.jsonl")
    log.unlink(missing_ok=True)
    env = {**os.environ, "PANCREAS_LOCUST_PAYLOADS": str(payloads), "PANCREAS_LOCUST_LOG": str(log)}
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = proc.communicate()
    finally:
        stop_process(proc)
    stats = parse_request_log(log)
    stats["csv"] = parse_locust_csv(csv_prefix)
    stats["locust_exit_code"] = proc.returncode
    stats["locust_output_tail"] = output.decode(errors="replace")[-3000:] if output else ""
    return stats


def _percentiles(ms: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "mean_ms": float(a.mean())}


def parse_request_log(path: Path) -> dict[str, Any]:
    """Per request name + Aggregated: requests, failures, RPS; latency percentiles of successful requests."""
    import json

    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    span = (max(r["end"] for r in records) - min(r["end"] - r["ms"] / 1e3 for r in records)) if records else 0.0
    rows: dict[str, dict[str, Any]] = {}
    rejected = other = 0
    errors: dict[str, int] = {}
    for name in [*sorted({r["name"] for r in records}), "Aggregated"]:
        mine = [r for r in records if name in ("Aggregated", r["name"])]
        ok = [r["ms"] for r in mine if r["error"] is None]
        rows[name] = {"requests": len(mine), "failures": len(mine) - len(ok), "successes": len(ok),
                      "rps": len(mine) / span if span else None, **_percentiles(ok)}
    for r in records:
        if r["error"] is not None:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
            if "503 queue full" in r["error"]:
                rejected += 1
            else:
                other += 1
    return {"rows": rows, "aggregated": rows["Aggregated"], "rejected_503": rejected, "failures_other": other,
            "errors": errors, "span_s": span, "source": "request log (every finished request)"}


def _num(x: str) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def parse_locust_csv(prefix: Path) -> dict[str, Any]:
    """Rows of ``PREFIX_stats.csv`` (per request name + Aggregated) and 503s vs other failures."""
    stats_file, failures_file = Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv")
    if not stats_file.is_file():
        raise PancreasError(f"locust wrote no {stats_file}; it probably failed to start")
    rows = {}
    with open(stats_file, newline="") as f:
        for r in csv.DictReader(f):
            rows[r["Name"]] = {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                               "rps": _num(r["Requests/s"]), "mean_ms": _num(r["Average Response Time"]),
                               "p50_ms": _num(r["50%"]), "p95_ms": _num(r["95%"]), "p99_ms": _num(r["99%"]),
                               "max_ms": _num(r["Max Response Time"])}
    rejected = other = 0
    errors: dict[str, int] = {}
    if failures_file.is_file():
        with open(failures_file, newline="") as f:
            for r in csv.DictReader(f):
                n = int(r["Occurrences"])
                errors[r["Error"]] = errors.get(r["Error"], 0) + n
                if "503 queue full" in r["Error"]:
                    rejected += n
                else:
                    other += n
    return {"rows": rows, "aggregated": rows.get("Aggregated", {}), "rejected_503": rejected,
            "failures_other": other, "errors": errors}


def _one_run(cfg: LoadConfig, payloads: Path, out: Path, label: str, *, users: int, duration: str,
             queue_size: int | None) -> dict[str, Any]:
    env = {"PANCREAS_QUEUE_SIZE": str(queue_size)} if queue_size else {}
    if cfg.request_timeout_s:
        env["PANCREAS_REQUEST_TIMEOUT_S"] = str(cfg.request_timeout_s)
    raw = out / f"{cfg.name}-raw"  # locust CSVs and service logs
    raw.mkdir(parents=True, exist_ok=True)
    if cfg.host:
        return _measure(cfg.host, payloads, raw, label, users=users, spawn=cfg.spawn_rate, duration=duration)
    with ServiceProcess(cfg.bundle, env=env, log=raw / f"service-{label}.log") as svc:
        svc.wait_ready(cfg.ready_timeout_s)
        result = _measure(svc.url, payloads, raw, label, users=users, spawn=cfg.spawn_rate, duration=duration)
    result["queue_size"] = queue_size
    return result


def _measure(host: str, payloads: Path, out: Path, label: str, *, users: int, spawn: float,
             duration: str) -> dict[str, Any]:
    before = scrape_metrics(host)
    t0 = time.perf_counter()
    locust = run_locust(host, payloads, users=users, spawn_rate=spawn, duration=duration,
                        csv_prefix=out / f"locust-{label}")
    wall = time.perf_counter() - t0
    return {"label": label, "host": host, "users": users, "spawn_rate": spawn, "duration": duration,
            "wall_s": wall, "locust": locust, "service": metrics_delta(before, scrape_metrics(host))}


def load_test(cfg: LoadConfig) -> dict[str, Any]:
    """Run the load test (and the optional over-capacity run); write JSON + markdown; return the result."""
    from benchmarks.loadreport import write_load_report
    from benchmarks.machine import machine_info

    if cfg.users < 1 or cfg.spawn_rate <= 0:
        raise PancreasError(f"--users {cfg.users} must be >= 1 and --spawn-rate {cfg.spawn_rate} > 0")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    payloads = Path(cfg.payloads) if cfg.payloads else make_payloads(cfg.sizes, seed=cfg.seed)
    runs = [_one_run(cfg, payloads, out, "main", users=cfg.users, duration=cfg.duration,
                     queue_size=cfg.queue_size)]
    if cfg.overload_users:
        runs.append(_one_run(cfg, payloads, out, "overload", users=cfg.overload_users,
                             duration=cfg.overload_duration, queue_size=cfg.overload_queue_size))
    main = runs[0]
    server_errors = sum(v for k, v in main["service"]["counters"].items() if k.startswith("pancreas_errors_total"))
    ok = (main["locust"]["aggregated"].get("requests", 0) > 0 and main["locust"]["aggregated"]["failures"] == 0
          and server_errors == 0)
    result = {"config": asdict(cfg), "machine": machine_info(), "payloads": _payload_list(payloads),
              "runs": runs, "ok": ok}
    result["files"] = write_load_report(result, out, cfg.name)
    return result


def _payload_list(folder: Path) -> list[dict[str, Any]]:
    return [{"file": str(p.relative_to(folder)), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*_0000.nii.gz"))]


def summary_lines(result: dict[str, Any]) -> list[str]:
    from benchmarks.loadreport import run_table

    return [*run_table(result), f"results: {', '.join(result['files'].values())}",
            "load test " + ("passed: 0 failures" if result["ok"] else "FAILED: failures in the main run")]


__all__ = ["LoadConfig", "ServiceProcess", "free_port", "load_test", "make_payloads", "parse_locust_csv"]
