"""``pancreas bench load``: start the service, run locust headless against it, collect latency and errors.

:func:`load_test` starts ``pancreas serve`` on a free port (unless ``host`` is given), waits for ``/readyz``,
runs ``locust -f benchmarks/locustfile.py --headless`` with the given users / spawn rate / duration,
reads locust's CSV (p50/p95/p99, requests/s, failures; ``503 queue full`` counted apart) and the service's
``/metrics`` before and after (stage histograms → count, mean and p50/p95/p99 estimates; errors by code),
optionally repeats past capacity (many users, tiny queue) to show the 503 behaviour, stops everything it
started (also on errors and Ctrl-C), and writes ``<out>/<name>.json`` and ``.md``.

For a started service it also samples the service's RSS every ``rss_interval_s``, gives it a private
``PANCREAS_TMP_DIR`` and reports what is left there after the runs. A *soak* runs the overload on the same
service (``overload_same_service``: its own queue, so 503s appear only past capacity) with ``slow_users``
slow and stalled clients mixed in (the locustfile's ``SlowUploadUser``), then checks that the service
still answers a prediction correctly::

    pancreas bench load --sizes crop --users 4 --duration 10m --overload-users 16 --overload-duration 1m \
        --overload-same-service --slow-users 4 --name soak-cpu
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadmetrics import RssSampler, metrics_delta, rss_summary, scrape_metrics
from pancreas.errors import PancreasError
from pancreas.quiz import CHANNEL, NII
from pancreas.testing import ServerProcess, stop_process

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
    overload_same_service: bool = False  # soak: the overload hits the main run's service (its own queue)
    slow_users: int = 0  # slow / stalled raw-socket clients mixed into the overload run
    rss_interval_s: float = 10.0
    rss_warmup_s: float = 60.0  # RSS flatness is judged on the main run's samples after this


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
               csv_prefix: Path, slow_users: int = 0) -> dict[str, Any]:
    """Run locust headless; return client-side stats from the request log (and locust's CSV, kept as ``csv``).

    Locust writes its CSV when the run time is up; requests that finish during ``--stop-timeout`` are
    missing there. The locustfile logs every finished request, so the log is the complete record.
    """
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
           str(spawn_rate), "-t", duration, "--csv", str(csv_prefix), "--host", host, "--only-summary",
           "--stop-timeout", "600", "--loglevel", "WARNING", "PredictUser"]
    if slow_users:
        cmd.append("SlowUploadUser")
    log = Path(f"{csv_prefix}_requests.jsonl")
    log.unlink(missing_ok=True)
    env = {**os.environ, "PANCREAS_LOCUST_PAYLOADS": str(payloads), "PANCREAS_LOCUST_LOG": str(log),
           "PANCREAS_LOCUST_SLOW_USERS": str(slow_users)}
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
    rejected = other = stalled = 0
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
            elif r["error"].startswith("408 stalled upload cut off"):
                stalled += 1
            else:
                other += 1
    return {"rows": rows, "aggregated": rows["Aggregated"], "rejected_503": rejected, "failures_other": other,
            "stalled_408": stalled, "errors": errors, "span_s": span,
            "source": "request log (every finished request)"}


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


@dataclass(frozen=True)
class Phase:
    """One locust run against a service."""

    label: str
    users: int
    duration: str
    slow_users: int = 0


def _service_env(cfg: LoadConfig, queue_size: int | None, tmp: Path) -> dict[str, str]:
    env = {"PANCREAS_TMP_DIR": str(tmp)}
    if queue_size:
        env["PANCREAS_QUEUE_SIZE"] = str(queue_size)
    if cfg.request_timeout_s:
        env["PANCREAS_REQUEST_TIMEOUT_S"] = str(cfg.request_timeout_s)
    return env


def _session(cfg: LoadConfig, payloads: Path, out: Path, phases: list[Phase], *,
             queue_size: int | None) -> dict[str, Any]:
    """Run ``phases`` one after the other against one service (started here unless ``cfg.host``)."""
    raw = out / f"{cfg.name}-raw"  # locust CSVs and service logs
    raw.mkdir(parents=True, exist_ok=True)
    if cfg.host:
        runs = [_measure(cfg.host, payloads, raw, p, spawn=cfg.spawn_rate) for p in phases]
        return {"runs": runs, "rss": [], "tmp_left": None, "after": None}
    tmp = raw / f"tmp-{phases[0].label}"
    tmp.mkdir(exist_ok=True)
    with ServerProcess.serve(cfg.bundle, env={**os.environ, **_service_env(cfg, queue_size, tmp)},
                             log=raw / f"service-{phases[0].label}.log") as svc:
        svc.wait_ready(cfg.ready_timeout_s)
        with RssSampler(svc.process.pid, cfg.rss_interval_s) as rss:
            runs = []
            for phase in phases:
                rss.phase = phase.label
                runs.append(_measure(svc.url, payloads, raw, phase, spawn=cfg.spawn_rate))
            rss.phase = "after"
            after = _check_after(svc.url, payloads)
    for run in runs:
        run["queue_size"] = queue_size
    return {"runs": runs, "rss": rss.samples, "tmp_left": sorted(p.name for p in tmp.iterdir()), "after": after}


def _check_after(host: str, payloads: Path) -> dict[str, Any]:
    """After the load: /healthz, /readyz and one prediction of the smallest payload still succeed."""
    import httpx

    smallest = min(payloads.rglob(f"*{CHANNEL}{NII}"), key=lambda p: p.stat().st_size)
    with httpx.Client(base_url=host, timeout=600) as c:
        health, ready = c.get("/healthz").status_code, c.get("/readyz").status_code
        r = c.post("/v1/predict", files={"file": (smallest.name, smallest.read_bytes(), "application/gzip")})
        ok = r.status_code == 200 and "mask" in r.json()
    return {"healthz": health, "readyz": ready, "predict": r.status_code, "ok": ok and health == ready == 200}


def _measure(host: str, payloads: Path, out: Path, phase: Phase, *, spawn: float) -> dict[str, Any]:
    before = scrape_metrics(host)
    t0 = time.perf_counter()
    locust = run_locust(host, payloads, users=phase.users, spawn_rate=spawn, duration=phase.duration,
                        csv_prefix=out / f"locust-{phase.label}", slow_users=phase.slow_users)
    wall = time.perf_counter() - t0
    return {"label": phase.label, "host": host, "users": phase.users, "slow_users": phase.slow_users,
            "spawn_rate": spawn, "duration": phase.duration, "wall_s": wall, "locust": locust,
            "service": metrics_delta(before, scrape_metrics(host))}


def load_test(cfg: LoadConfig) -> dict[str, Any]:
    """Run the load test (and the optional over-capacity run); write JSON + markdown; return the result."""
    from benchmarks.loadreport import write_load_report
    from benchmarks.machine import machine_info

    if cfg.users < 1 or cfg.spawn_rate <= 0:
        raise PancreasError(f"--users {cfg.users} must be >= 1 and --spawn-rate {cfg.spawn_rate} > 0")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    payloads = Path(cfg.payloads) if cfg.payloads else make_payloads(cfg.sizes, seed=cfg.seed)
    main = Phase("main", cfg.users, cfg.duration)
    over = Phase("overload", cfg.overload_users, cfg.overload_duration, cfg.slow_users) if cfg.overload_users else None
    if over is not None and cfg.overload_same_service:
        sessions = [_session(cfg, payloads, out, [main, over], queue_size=cfg.queue_size)]
    else:
        sessions = [_session(cfg, payloads, out, [main], queue_size=cfg.queue_size)]
        if over is not None:
            sessions.append(_session(cfg, payloads, out, [over], queue_size=cfg.overload_queue_size))
    runs = [run for s in sessions for run in s["runs"]]
    checks = _checks(cfg, runs, sessions)
    result = {"config": asdict(cfg), "machine": machine_info(), "payloads": _payload_list(payloads),
              "runs": runs, "ok": all(checks.values()), "checks": checks,
              "rss": [dict(s, session=i) for i, sess in enumerate(sessions) for s in sess["rss"]],
              "rss_summary": rss_summary(sessions[0]["rss"], phase="main", warmup_s=cfg.rss_warmup_s),
              "tmp_left": [sess["tmp_left"] for sess in sessions], "after": [sess["after"] for sess in sessions]}
    result["files"] = write_load_report(result, out, cfg.name)
    return result


def _checks(cfg: LoadConfig, runs: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> dict[str, bool]:
    """The pass/fail verdicts of a load test (a soak adds RSS, temp files and the after-check)."""
    main = runs[0]
    server_errors = sum(v for k, v in main["service"]["counters"].items()
                        if k.startswith("pancreas_errors_total"))
    agg = main["locust"]["aggregated"]
    checks = {"main: requests > 0": agg.get("requests", 0) > 0,
              "main: 0 failures (client side)": agg.get("failures", 1) == 0,
              "main: 0 errors (server side)": server_errors == 0}
    for run in runs[1:]:
        checks[f"{run['label']}: no failures but 503 past capacity (and 408 for stalled clients)"] = \
            run["locust"]["failures_other"] == 0
    if not cfg.host:
        checks["no temp files left"] = all(not s["tmp_left"] for s in sessions)
        checks["service healthy and correct after the load"] = all(s["after"]["ok"] for s in sessions)
        summary = rss_summary(sessions[0]["rss"], phase="main", warmup_s=cfg.rss_warmup_s)
        if summary["flat"] is not None:
            checks["RSS flat after warm-up (within +10 %)"] = summary["flat"]
    return checks


def _payload_list(folder: Path) -> list[dict[str, Any]]:
    return [{"file": str(p.relative_to(folder)), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob(f"*{CHANNEL}{NII}"))]


def summary_lines(result: dict[str, Any]) -> list[str]:
    from benchmarks.loadreport import run_table

    failed = [name for name, ok in result["checks"].items() if not ok]
    return [*run_table(result), f"results: {', '.join(result['files'].values())}",
            "load test " + ("passed: " + "; ".join(result["checks"]) if not failed else "FAILED: " + "; ".join(failed))]


__all__ = ["LoadConfig", "load_test", "make_payloads", "parse_locust_csv"]
