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
              "503 queue full | 408 stalled | other failures |"),
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        lc = run["locust"]
        for name, r in lc["rows"].items():
            agg = name == "Aggregated"
            lines.append(f"| {run['label']} | {run['users']} | {run.get('queue_size') or 'default'} | {name} | "
                         f"{r['requests']} | {r.get('successes', '')} | {_f(r['rps'], '{:.2f}')} | {_f(r['p50_ms'])} | {_f(r['p95_ms'])} | "
                         f"{_f(r['p99_ms'])} | {_f(r['max_ms'])} | {lc['rejected_503'] if agg else ''} | "
                         f"{lc.get('stalled_408', 0) if agg else ''} | {lc['failures_other'] if agg else ''} |")
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


def soak_lines(result: dict[str, Any]) -> list[str]:
    """Verdicts, RSS every sample, temp files left and the after-load check (absent for older results)."""
    lines = ["## Checks", "", *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in result.get("checks", {}).items()),
             ""]
    summary = result.get("rss_summary") or {}
    if summary.get("samples"):
        lines += ["## Service RSS", "",
                  (f"Main run after {summary['warmup_s']:g} s of warm-up: {summary['baseline_mb']:.0f} MB at first, "
                   f"peak {summary['peak_mb']:.0f} MB ({100 * summary['growth']:+.1f} %, limit "
                   f"+{100 * summary['tolerance']:.0f} %), {summary['end_mb']:.0f} MB at the end of the main run."), "",
                  "| session | phase | t s | RSS MB |", "|---:|---|---:|---:|",
                  *(f"| {r['session']} | {r['phase']} | {r['t_s']:.0f} | {r['rss_mb']:.0f} |" for r in result["rss"]),
                  ""]
    if result.get("tmp_left") is not None:
        lines += [f"Temp files left in the service's PANCREAS_TMP_DIR after the runs: {result['tmp_left']}", ""]
    if result.get("after"):
        lines += [f"After the load (per service): {result['after']}", ""]
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
             f"**{'all checks passed' if result['ok'] else 'FAILED'}**", "",
             "## Locust (client side)", "",
             ("Every finished request, from the locustfile's request log (locust's own CSV, kept in the JSON, "
             "misses requests that finish during `--stop-timeout`); latency percentiles are over successful "
             "requests."), "", *run_table(result), "",
             *soak_lines(result),
             "## Service /metrics (server side, difference between scrapes before and after the run)", "",
             *service_table(result), "", "Counters:", "", *_counters(result), ""]
    if over:
        lc = over["locust"]
        lines += ["## Past capacity", "",
                  (f"{over['users']} users ({over.get('slow_users', 0)} of them slow or stalled raw-socket clients) "
                  f"against a queue of {over.get('queue_size') or 'default (8)'}: "
                  f"{lc['aggregated'].get('requests', 0)} requests, {lc['rejected_503']} answered "
                  f"`503` + `Retry-After` at once (counted apart), {lc.get('stalled_408', 0)} stalled uploads cut "
                  f"off with `408`, {lc['failures_other']} other failures. "
                  "Users back off for Retry-After (capped at 2 s) after a 503."), ""]
    return "\n".join(lines)


def write_load_report(result: dict[str, Any], out: Path, name: str) -> dict[str, str]:
    files = {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md")}
    result["files"] = files
    Path(files["json"]).write_text(json.dumps(result, indent=2, default=str))
    Path(files["md"]).write_text(markdown(result))
    return files
