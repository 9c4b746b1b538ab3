"""Side-by-side measurement of optimized bundles and the ``benchmarks/results/optimize.md`` table.

:func:`measure_variant` runs one bundle through the real engine (preprocess → sliding window → postprocess)
on held-out phantom cases (DSC whole/lesion, subtype macro-F1, per-case latency) and times single patches
on its backend; :func:`write_report` renders the rows with the command that produced each bundle.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimize.data import Case, preprocess_case, read_volume_safe, sample_from_case
from optimize.prune import count_macs, count_parameters
from optimize.runners import time_runner
from pancreas.backends import ARTIFACT_KINDS
from pancreas.bundle import Bundle
from pancreas.engine import Engine, EngineConfig
from pancreas.metrics import dice, macro_f1
from pancreas.network import build_network

logger = logging.getLogger(__name__)


@dataclass
class VariantRow:
    """One row of the optimize report."""

    name: str
    command: str
    backend: str
    precision: str
    size_mb: float
    params: int | None
    gflops_per_patch: float | None
    whole_dsc: float
    lesion_dsc: float
    macro_f1: float
    ms_per_patch: float
    ms_per_case: float
    ms_network_per_case: float | None = None
    gpu_ms_per_patch: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _model_stats(bundle: Any, artifact_path: Path) -> tuple[float, int | None, float | None]:
    """(artifact size MB, params, GFLOPs per patch = 2 × MACs) of the bundle's network."""
    net = build_network(bundle.plans, bundle.metadata.network)
    example = torch.zeros(1, 1, *bundle.configuration["patch_size"])
    return (round(artifact_path.stat().st_size / 1e6, 2), count_parameters(net),
            round(2 * count_macs(net, example) / 1e9, 2))


def measure_variant(bundle_dir: str | Path, *, name: str, command: str, backend: str, precision: str,
                    cases: list[Case], threads: int = 2, step_size: float = 0.5) -> VariantRow:
    """Per-case accuracy and latency through :class:`pancreas.engine.Engine`, plus per-patch latency."""
    bundle = Bundle.load(bundle_dir)
    engine = Engine.from_bundle(bundle, EngineConfig(backend=backend, precision=precision, device="cpu",
                                                     num_threads=threads, step_size=step_size))
    engine.warmup()
    whole, lesion, times, network, y_true, y_pred = [], [], [], [], [], []
    for case in cases:
        volume, ref = read_volume_safe(case.image), read_volume_safe(case.mask).array.astype(np.uint8)
        t0 = time.perf_counter()
        pred = engine.predict(volume)
        times.append((time.perf_counter() - t0) * 1e3)
        network.append(pred.timings_ms.get("inference", float("nan")))
        whole.append(dice(pred.mask > 0, ref > 0))
        lesion.append(dice(pred.mask == 2, ref == 2))
        y_true.append(case.subtype)
        y_pred.append(pred.subtype)
    patch = real_patch(bundle, cases[0], engine.backend.patch_size)
    kind = ARTIFACT_KINDS.get(backend, backend)
    art = next(a for a in bundle.metadata.artifacts if a.kind == kind and (kind == "torch" or a.precision == precision))
    size, params, gflops = _model_stats(bundle, bundle.path(art))
    return VariantRow(name=name, command=command, backend=backend, precision=precision, size_mb=size,
                      params=params, gflops_per_patch=gflops, whole_dsc=round(float(np.mean(whole)), 4),
                      lesion_dsc=round(float(np.mean(lesion)), 4), macro_f1=round(macro_f1(y_true, y_pred), 4),
                      ms_per_patch=round(time_runner(engine.backend, patch, repeats=5), 1),
                      ms_per_case=round(statistics.median(times), 1),
                      ms_network_per_case=round(statistics.median(network), 1), extra={"cases": len(cases)})


def real_patch(bundle: Any, case: Case, patch_size: tuple[int, ...]) -> np.ndarray:
    """One preprocessed patch ``[1,1,*patch]`` centred on the case's foreground (for per-patch timing)."""
    image, labels = preprocess_case(bundle, case)
    x, _ = sample_from_case(image, labels, tuple(patch_size), 1, np.random.default_rng(0), fg_fraction=1.0)
    return x


_COLUMNS = ("variant", "backend", "precision", "size MB", "params", "GFLOPs/patch", "whole DSC", "lesion DSC",
            "macro-F1", "CPU ms/patch", "CPU ms/case", "of which sliding window", "GPU ms/patch", "command")


def row_cells(row: VariantRow) -> list[str]:
    fmt = lambda v, f="{}": "–" if v is None else f.format(v)
    return [row.name, row.backend, row.precision, fmt(row.size_mb, "{:.2f}"), fmt(row.params, "{:,}"),
            fmt(row.gflops_per_patch, "{:.2f}"), f"{row.whole_dsc:.4f}", f"{row.lesion_dsc:.4f}",
            f"{row.macro_f1:.3f}", f"{row.ms_per_patch:.0f}", f"{row.ms_per_case:.0f}",
            fmt(row.ms_network_per_case, "{:.0f}"), fmt(row.gpu_ms_per_patch, "{:.2f}"), f"`{row.command}`"]


def render_table(rows: list[VariantRow]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def write_report(rows: list[VariantRow], path: str | Path, *, title: str, preamble: str, notes: str) -> Path:
    """Write the markdown report (and a JSON twin with every measured field)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n{preamble.strip()}\n\n{render_table(rows)}\n\n{notes.strip()}\n")
    path.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    logger.info("wrote %s", path)
    return path


def paired_latency(a: tuple[str | Path, str, str], b: tuple[str | Path, str, str], cases: list[Case], *,
                   threads: int = 2, rounds: int = 1) -> dict[str, Any]:
    """Per-case latency of two (bundle, backend, precision) variants, alternating A, B on every case.

    Alternating makes the ratio robust to load that drifts during a run on a shared machine; the result
    holds the median per-case times and the median of the per-case ratios A/B (total and sliding window).
    """
    engines = [Engine.from_bundle(Path(path), EngineConfig(backend=backend, precision=precision, device="cpu",
                                                           num_threads=threads))
               for path, backend, precision in (a, b)]
    for engine in engines:
        engine.warmup()
    total: list[list[float]] = [[], []]
    network: list[list[float]] = [[], []]
    for _ in range(rounds):
        for case in cases:
            volume = read_volume_safe(case.image)
            for i, engine in enumerate(engines):
                t0 = time.perf_counter()
                pred = engine.predict(volume)
                total[i].append((time.perf_counter() - t0) * 1e3)
                network[i].append(pred.timings_ms.get("inference", float("nan")))
    ratio = [x / y for x, y in zip(total[0], total[1])]
    ratio_net = [x / y for x, y in zip(network[0], network[1])]
    return {"a": [str(v) for v in a], "b": [str(v) for v in b], "cases": len(cases) * rounds,
            "ms_per_case": [round(statistics.median(t), 1) for t in total],
            "ms_network_per_case": [round(statistics.median(t), 1) for t in network],
            "speedup_per_case": round(statistics.median(ratio), 3),
            "speedup_sliding_window": round(statistics.median(ratio_net), 3)}
