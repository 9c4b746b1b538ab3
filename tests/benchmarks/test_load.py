"""`pancreas bench load` starts a real service, runs locust headless against it, and stops everything."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

from benchmarks.load import LoadConfig, load_test, parse_locust_csv
from benchmarks.loadmetrics import histogram_quantile


def _port_closed(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as s:
        return s.connect_ex((parsed.hostname, parsed.port)) != 0


def test_load_wrapper_runs_locust_and_shows_503_past_capacity(bundle, case_writer, tmp_path: Path) -> None:
    payloads = tmp_path / "payloads"
    case_writer(payloads / "crop", "crop_0_000", (16, 32, 32))
    cfg = LoadConfig(bundle=str(bundle.root), users=1, spawn_rate=1, duration="8s", payloads=str(payloads),
                     out=str(tmp_path / "out"), name="load-test", overload_users=4, overload_queue_size=1,
                     overload_duration="6s", ready_timeout_s=180)
    result = load_test(cfg)

    main, over = result["runs"]
    agg = main["locust"]["aggregated"]
    assert result["ok"], main["locust"]
    assert agg["requests"] >= 1 and agg["failures"] == 0 and agg["p50_ms"] > 0 and agg["p99_ms"] >= agg["p50_ms"]
    assert "/v1/predict crop" in main["locust"]["rows"]
    hist = main["service"]["histograms"]
    assert hist["total"]["count"] >= agg["requests"] and hist["total"]["p95_ms"] > 0
    assert main["service"]["counters"]["pancreas_predictions_total"] >= 1

    assert over["queue_size"] == 1
    assert over["locust"]["rejected_503"] >= 1 and over["locust"]["failures_other"] == 0
    assert over["service"]["counters"]["pancreas_errors_total{code=queue_full}"] >= 1

    for run in result["runs"]:  # the services we started are gone
        assert _port_closed(run["host"])
    saved = json.loads((tmp_path / "out" / "load-test.json").read_text())
    assert saved["runs"][1]["locust"]["rejected_503"] == over["locust"]["rejected_503"]
    md = (tmp_path / "out" / "load-test.md").read_text()
    assert "## Past capacity" in md and "p99 ms" in md and "0 failures" in md


@pytest.mark.parametrize(("q", "expected"), [(0.5, 1.5), (0.95, 2.8), (1.0, 3.0), (0.25, 1.0)])
def test_histogram_quantile_interpolates_like_prometheus(q: float, expected: float) -> None:
    buckets = [(1.0, 5.0), (2.0, 15.0), (3.0, 20.0), (float("inf"), 20.0)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def test_parse_locust_csv_counts_503_apart(tmp_path: Path) -> None:
    head = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
            "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
            "99.99%,100%\n")
    (tmp_path / "x_stats.csv").write_text(
        head + "POST,/v1/predict crop,10,4,100,120,50,300,10,2.0,0.8,100,110,120,130,200,250,280,300,300,300,300\n"
        ",Aggregated,10,4,100,120,50,300,10,2.0,0.8,100,110,120,130,200,250,280,300,300,300,300\n")
    (tmp_path / "x_failures.csv").write_text(
        'Method,Name,Error,Occurrences\nPOST,/v1/predict crop,"503 queue full (Retry-After 1)",3\n'
        'POST,/v1/predict crop,"HTTP 500: boom",1\n')
    stats = parse_locust_csv(tmp_path / "x")
    assert stats["rejected_503"] == 3 and stats["failures_other"] == 1
    assert stats["aggregated"]["p95_ms"] == 250 and stats["aggregated"]["rps"] == 2.0


def test_request_log_counts_late_requests_and_503_apart(tmp_path: Path) -> None:
    from benchmarks.load import parse_request_log

    log = tmp_path / "x_requests.jsonl"
    recs = [("/v1/predict crop", 100.0, None), ("/v1/predict crop", 300.0, None),
            ("/v1/predict full", 5.0, "503 queue full (Retry-After 1)"),
            ("/v1/predict full", 900.0, "HTTP 504: timeout")]
    log.write_text("".join(json.dumps({"end": 10.0 + i, "type": "POST", "name": n, "ms": ms, "error": e}) + "\n"
                           for i, (n, ms, e) in enumerate(recs)))
    stats = parse_request_log(log)
    agg = stats["aggregated"]
    assert agg["requests"] == 4 and agg["successes"] == 2 and agg["failures"] == 2
    assert stats["rejected_503"] == 1 and stats["failures_other"] == 1
    assert agg["p50_ms"] == pytest.approx(200.0) and agg["max_ms"] == 300.0
    assert stats["rows"]["/v1/predict full"]["p50_ms"] is None  # no successful full request
