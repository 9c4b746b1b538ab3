"""Markdown + JSON report of a ``pancreas bench load`` result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_line


def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def run_table(result: dict[str, Any]) -> list[str]:
    """Locust's view: one row per run and request name."""
    lines = [("| run | users | queue | request | requests | OK | RPS | p50 ms | p95 ms | p99 ms | max ms | "
              "503 queue full | other failures |"), "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        lc = run["locust"]
        for name, r in lc["rows"].items():
            agg = name == "Aggregated"
            lines.append(f"| {run['label']} | {run['users']} | {run.get('queue_size') or 'default'} | {name} | "
                         f"{r['requests']} | {r.get('successes', '')} | {_f(r['rps'], '{:.2f}')} | {_f(r['p50_ms'])} | {_f(r['p95_ms'])} | "
                         f"{_f(r['p99_ms'])} | {_f(r['max_ms'])} | {lc['rejected_503'] if agg else ''} | "
                         f"{lc['failures_other'] if agg else ''} |")
    return lines


def service_table(result: dict[str, Any]) -> list[str]:
    """The service's view: stage histograms from ``/metrics`` (estimates from bucket bounds)."""
    lines = ["| run | stage | count | mean ms | p50 ms | p95 ms | p99 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        for stage, h in run["service"]["histograms"].items():
            if h["count"]:
                lines.append(f"| {run['label']} | {stage} | {h['count']} | {_f(h['mean_ms'])} | {_f(h['p50_ms'])} | "
                             f"{_f(h['p95_ms'])} | {_f(h['p99_ms'])} |")
    return lines


def _counters(result: dict[str, Any]) -> list[str]:
    lines = []
    for run in result["runs"]:
        interesting = {k: v for k, v in run["service"]["counters"].items()
                       if any(w in k for w in ("error", "prediction", "queue", "progress")) and v}
        lines.append(f"- {run['label']}: " + (", ".join(f"`{k}` {v:g}" for k, v in sorted(interesting.items()))
                                              or "no counters"))
    return lines


def markdown(result: dict[str, Any]) -> str:
    cfg, m = result["config"], result["machine"]
    over = next((r for r in result["runs"] if r["label"] == "overload"), None)
    lines = [f"# Load test: `pancreas serve` under locust ({cfg['name']})", "",
             f"- machine: {machine_line(m)}", (f"- service: {cfg['host'] or 'started by the benchmark'}; "
             f"bundle {cfg['bundle'] or 'default (demo bundle)'}"),
             f"- payloads: {', '.join(p['file'] + ' (' + str(p['bytes'] // 1024) + ' KiB)' for p in result['payloads'])}",
             f"- main run: {cfg['users']} users, spawn rate {cfg['spawn_rate']}/s, {cfg['duration']}",
             (f"- service settings: queue {cfg['queue_size'] or 'default (8)'}, request timeout "
             f"{cfg.get('request_timeout_s') or 'default (300 s)'}"),
             f"- command: `{cfg['command']}`", "",
             f"**main run: {'0 failures (client and server side)' if result['ok'] else 'FAILURES'}**", "",
             "## Locust (client side)", "",
             ("Every finished request, from the locustfile's request log (locust's own CSV, kept in the JSON, "
             "misses requests that finish during `--stop-timeout`); latency percentiles are over successful "
             "requests."), "", *run_table(result), "",
             "## Service /metrics (server side, difference between scrapes before and after the run)", "",
             *service_table(result), "", "Counters:", "", *_counters(result), ""]
    if over:
        lc = over["locust"]
        lines += ["## Past capacity", "",
                  (f"{over['users']} users against a queue of {over.get('queue_size')}: "
                  f"{lc['aggregated'].get('requests', 0)} requests, {lc['rejected_503']} answered "
                  f"`503` + `Retry-After` at once (counted apart), {lc['failures_other']} other failures. "
                  "Users back off for Retry-After (capped at 2 s) after a 503."), ""]
    return "\n".join(lines)


def write_load_report(result: dict[str, Any], out: Path, name: str) -> dict[str, str]:
    files = {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md")}
    result["files"] = files
    Path(files["json"]).write_text(json.dumps(result, indent=2, default=str))
    Path(files["md"]).write_text(markdown(result))
    return files
