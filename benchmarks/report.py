"""Write a comparison result as JSON, a markdown table and a PNG chart; the compact per-case table for stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_line

METHOD = (
    "Each candidate runs in its own spawned process for the whole run (load + warm-up once, reported as setup); "
    "runs alternate between candidates case by case, the order rotating every repeat; times are medians over "
    "repeats of the wall time of one call from the image file on disk to the mask file on disk. "
    "Peak RSS is the candidate process's high-water mark during the case (weights and runtime included). "
    "nnU-Net candidates are `nnUNetPredictor` (nnunetv2) with our weights via `manual_initialization`, "
    "running nnU-Net's own preprocessing, sliding window and export (as `predict_from_files_sequential`)."
)


#: comparable stage groups: nnU-Net's three calls and our engine's stages, file in -> file out
STAGE_GROUPS: dict[str, tuple[str, ...]] = {
    "read+prep": ("read_preprocess", "read", "preprocess"),
    "coarse": ("coarse",),
    "network": ("sliding_window", "inference"),
    "back+write": ("resample_export", "resample_back", "export", "postprocess", "write"),
}


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 1e3:.2f}" for k, v in stages.items())


def summary_table(result: dict[str, Any]) -> list[str]:
    lines = [("| candidate | total s (all cases) | speed-up vs nnU-Net default | vs nnU-Net no TTA | "
              "min per-case speed-up | DSC whole | DSC lesion | agreement whole vs baseline | peak RSS MB | GPU MB |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["summary"]:
        lines.append(f"| {s['candidate']} | {s['total_ms'] / 1e3:.2f} | {_f(s['speedup'], '{:.1f}×')} | "
                     f"{_f(s.get('speedup_no_tta'), '{:.1f}×')} | "
                     f"{_f(s['min_case_speedup'], '{:.1f}×')} | {_f(s['dsc_whole'], '{:.3f}')} | "
                     f"{_f(s['dsc_lesion'], '{:.3f}')} | {_f(s['agreement_whole'], '{:.3f}')} | "
                     f"{s['peak_rss_mb']:.0f} | {_f(s['gpu_peak_mb'], '{:.0f}')} |")
    return lines


def case_table(result: dict[str, Any]) -> list[str]:
    base = {r["case"]: r["total_ms"] for r in result["rows"] if r["candidate"] == "nnunet-default"}
    lines = [("| case | shape (z,y,x) | candidate | runs | total s (median) | speed-up | stages s | "
             "DSC whole | DSC lesion | agree whole | peak RSS MB | GPU MB |"),
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: (r["case"], r["total_ms"])):
        sp = base[r["case"]] / r["total_ms"] if r["case"] in base else None
        dsc, agr = r["dsc"] or {}, r["agreement"] or {}
        lines.append(f"| {r['case']} | {'×'.join(map(str, r['shape']))} | {r['candidate']} | {r['repeats']} | "
                     f"{r['total_ms'] / 1e3:.2f} | {_f(sp, '{:.1f}×')} | {_stages(r['stages_ms'])} | "
                     f"{_f(dsc.get('whole'), '{:.3f}')} | {_f(dsc.get('lesion'), '{:.3f}')} | "
                     f"{_f(agr.get('whole'), '{:.3f}')} | {r['peak_rss_mb']:.0f} | "
                     f"{_f(r.get('gpu_peak_mb'), '{:.0f}')} |")
    return lines


def stage_table(result: dict[str, Any], title: str = "") -> list[str]:
    """The per-case table printed on stdout: seconds per case and per stage group, speed-up vs both nnU-Net rows."""
    ref = {name: {r["case"]: r["total_ms"] for r in result["rows"] if r["candidate"] == name}
           for name in ("nnunet-default", "nnunet-no-tta")}
    head = " | ".join(f"{g} s" for g in STAGE_GROUPS)
    lines = [f"| {title or 'case'} | candidate | total s | {head} | ×default | ×no-TTA | GPU MB | agree |",
             "|---|---|---:|" + "---:|" * len(STAGE_GROUPS) + "---:|---:|---:|---:|"]
    order = [c["case_id"] for c in result["cases"]]
    for r in sorted(result["rows"], key=lambda r: (order.index(r["case"]), r["total_ms"])):
        groups = [sum(v for k, v in r["stages_ms"].items() if k in keys) for keys in STAGE_GROUPS.values()]
        sp = [ref[n][r["case"]] / r["total_ms"] if r["case"] in ref[n] else None for n in ref]
        agree = (r["agreement"] or {}).get("whole")
        lines.append(f"| {r['case']} {'×'.join(map(str, r['shape']))} | {r['candidate']} | {r['total_ms'] / 1e3:.2f} | "
                     + " | ".join(f"{g / 1e3:.2f}" for g in groups)
                     + f" | {_f(sp[0], '{:.1f}')} | {_f(sp[1], '{:.1f}')} | {_f(r.get('gpu_peak_mb'), '{:.0f}')} | "
                     f"{_f(agree, '{:.3f}')} |")
    return lines


def markdown(result: dict[str, Any], png_name: str | None) -> str:
    cfg, m = result["config"], result["machine"]
    lines = [f"# Compare: our engine vs nnU-Net v2's predictor ({result['config']['name']})", "",
             f"- machine: {machine_line(m)}; {m['os']}; python {m['python']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- bundles: {', '.join(cfg['bundles'])}",
             (f"- cases: {len(result['cases'])} from `{cfg['cases']}` "
             f"({', '.join(c['case_id'] + ' ' + '×'.join(map(str, c['shape'])) for c in result['cases'])})"),
             f"- repeats: {cfg['repeats']} (nnU-Net candidates: {cfg['baseline_repeats'] or cfg['repeats']})",
             f"- command: `{cfg['command']}`", "", f"**{result['best_line']}**", "", "## Summary", "",
             *summary_table(result), "", "## Per case", "", *case_table(result), "", "## Setup (once per candidate)", "",
             "| candidate | load s | warm-up s | info |", "|---|---:|---:|---|"]
    for name, s in result["setup"].items():
        if name.startswith("_"):
            lines.append(f"| {name} | – | – | {s['error']} |")
            continue
        info = json.dumps(s.get("info", {}), default=str)[:200] if s["ok"] else f"FAILED: {s['error']}"
        lines.append(f"| {name} | {_f(s.get('load_s'))} | {_f(s.get('warmup_s'))} | {info} |")
    if result["failures"]:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {f['candidate']} on {f['case']} (repeat {f['repeat']}): {f['error']}" for f in result["failures"]]
    if result.get("skipped"):
        lines += ["", "## Runs left out", ""]
        lines += [f"- {k['candidate']} on {k['case']} (repeat {k['repeat']}): {k['reason']}" for k in result["skipped"]]
    lines += ["", "## Method", "", METHOD, ""]
    if png_name:
        lines += [f"![chart]({png_name})", ""]
    lines += [result["best_line"], ""]
    return "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader (or a kill) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_reports(result: dict[str, Any], out: Path, name: str, *, chart: bool = True) -> dict[str, str]:
    """Write ``name.json``, ``name.md`` and (with ``chart``) ``name.png`` into ``out``; return their paths."""
    from benchmarks.plots import bar_chart

    files = {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md"), "png": str(out / f"{name}.png")}
    if chart and result["rows"]:
        bar_chart(result, Path(files["png"]))
    result["files"] = files
    write_text_atomic(Path(files["json"]), json.dumps(result, indent=2, default=str))
    png = Path(files["png"]).name if Path(files["png"]).is_file() else None
    write_text_atomic(Path(files["md"]), markdown(result, png))
    return files
