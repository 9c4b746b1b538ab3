"""Read the service's Prometheus ``/metrics`` and turn two scrapes into per-stage latency statistics."""

from __future__ import annotations

import math
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
