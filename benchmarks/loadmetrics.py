"""Read the service's Prometheus ``/metrics`` and turn two scrapes into per-stage latency statistics."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

#: (metric name, frozenset of label items) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_metrics(host: str, *, timeout_s: float = 10.0) -> Samples:
    """All samples of ``GET host/metrics`` (empty when the endpoint does not answer)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        resp = httpx.get(f"{host.rstrip('/')}/metrics", timeout=timeout_s)
        resp.raise_for_status()
    except httpx.HTTPError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return samples


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation in cumulative ``(le, count)`` buckets."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # the highest finite bucket bound, as Prometheus does
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def _delta(before: Samples, after: Samples) -> Samples:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def metrics_delta(before: Samples, after: Samples) -> dict[str, Any]:
    """Stage histograms (count, mean, p50/p95/p99 in ms), counters and gauges between two scrapes."""
    d = _delta(before, after)
    hist: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[float, float]]] = {}
    sums: dict[tuple[str, frozenset[tuple[str, str]]], dict[str, float]] = {}
    counters: dict[str, float] = {}
    hist_names = {name[: -len("_bucket")] for name, _ in d if name.endswith("_bucket")}
    for (name, labels), value in d.items():
        items = dict(labels)
        base, _, kind = name.rpartition("_")
        if kind == "bucket" and "le" in items:
            key = (base, frozenset((k, v) for k, v in labels if k != "le"))
            hist.setdefault(key, []).append((float(items["le"]), value))
        elif kind in ("sum", "count") and base in hist_names:
            sums.setdefault((base, labels), {})[kind] = value
        elif kind != "created":
            label = ",".join(f"{k}={v}" for k, v in sorted(items.items()))
            # counters as increments between the scrapes, gauges as their value at the end
            counters[f"{name}{{{label}}}" if label else name] = value if kind == "total" else after[(name, labels)]
    stages = {}
    for (base, labels), buckets in sorted(hist.items(), key=lambda kv: str(kv[0])):
        extra = sums.get((base, labels), {})
        count = extra.get("count", max((c for _, c in buckets), default=0.0))
        tag = ",".join(v for _, v in sorted(labels)) or base
        stages[tag] = {"metric": base, "count": int(count),
                       "mean_ms": 1e3 * extra["sum"] / count if count and "sum" in extra else None,
                       **{f"p{int(q * 100)}_ms": _ms(histogram_quantile(q, buckets)) for q in (0.5, 0.95, 0.99)}}
    return {"histograms": stages, "counters": counters}


def _ms(x: float | None) -> float | None:
    return None if x is None else 1e3 * x


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` on a thread (a context manager).

    Each sample is ``{"t_s", "rss_mb", "phase"}``; set :attr:`phase` to label the run in progress.
    """

    def __init__(self, pid: int, interval_s: float = 10.0) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.phase = ""
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._t0 = time.monotonic()

    def _sample(self) -> None:
        import psutil

        try:
            rss = self._proc.memory_info().rss
        except psutil.Error:  # the process is gone
            return
        self.samples.append({"t_s": round(time.monotonic() - self._t0, 1), "rss_mb": round(rss / 2**20, 1),
                             "phase": self.phase})

    def _loop(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 5)
        self._sample()


def rss_summary(samples: list[dict[str, Any]], *, phase: str, warmup_s: float, tolerance: float = 0.10
                ) -> dict[str, Any]:
    """Flatness of ``phase``: its samples after ``warmup_s`` (from the phase's start) stay within
    ``1 + tolerance`` of the first of them."""
    mine = [s for s in samples if s["phase"] == phase]
    if not mine:
        return {"phase": phase, "samples": 0, "flat": None}
    start = mine[0]["t_s"]
    warm = [s for s in mine if s["t_s"] - start >= warmup_s] or mine[-1:]
    base, peak = warm[0]["rss_mb"], max(s["rss_mb"] for s in warm)
    return {"phase": phase, "samples": len(mine), "warmup_s": warmup_s, "baseline_mb": base, "peak_mb": peak,
            "end_mb": mine[-1]["rss_mb"], "growth": round(peak / base - 1.0, 4) if base else None,
            "flat": bool(base and peak <= base * (1.0 + tolerance)), "tolerance": tolerance}
