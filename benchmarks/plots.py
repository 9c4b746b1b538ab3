"""Charts for benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.machine import machine_line


def bar_chart(result: dict[str, Any], path: Path) -> Path:
    """Grouped horizontal bars: median seconds per case for every candidate (log scale), machine in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    candidates = [s["candidate"] for s in result["summary"]]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * max(1, len(candidates)) * max(1, len(cases)) ** 0.5))
    height = 0.8 / max(1, len(cases))
    for j, case in enumerate(cases):
        shape = next(r["shape"] for r in rows if r["case"] == case)
        ys, xs = [], []
        for i, name in enumerate(candidates):
            row = next((r for r in rows if r["case"] == case and r["candidate"] == name), None)
            if row is not None:
                ys.append(i + j * height)
                xs.append(row["total_ms"] / 1e3)
        ax.barh(ys, xs, height=height, label=f"{case} ({'×'.join(map(str, shape))})")
    labels = []
    for s in result["summary"]:
        sp = f"  {s['speedup']:.1f}×" if s["speedup"] else ""
        labels.append(s["candidate"] + sp)
    ax.set_yticks([i + height * (len(cases) - 1) / 2 for i in range(len(candidates))], labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end seconds per case (file → mask file, median over repeats; log scale)")
    ax.set_title(f"{result['best_line']}\n{machine_line(result['machine'])}", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
