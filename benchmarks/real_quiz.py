"""Real-data results page: out-of-fold CV of a bundle plus an ablation table, each row with its command.

``python -m benchmarks.real_quiz --spec benchmarks/real_quiz_rows.json --out benchmarks/results/real-quiz.md``

The spec (JSON) names the data and every row::

    {"title": "...", "data": "...", "oof": "runs/oof/oof.json", "oof_command": "...", "scored_sources": ["phantom"],
     "rows": [{"row": "real only", "change": "...", "command": "...",
               "fold_metrics": "runs/.../fold_0/validation_metrics.json", "source": "real"},
              {"row": "phantom only", ..., "evaluation": "runs/eval/report.json"}]}

``fold_metrics`` is a training fold's held-out evaluation (network grid, ``by_source``); ``ablation`` plus
``variant`` is that variant's row of a ``pancreas ablate`` report (``ablation.json``; network grid), for a row whose
trainer folder a later run reused; ``evaluation`` is a ``pancreas evaluate --json`` report (original grid). An optional ``configurations`` block renders a
``pancreas find-best`` result (one row per configuration and per ensemble) with each member's CPU training
time, summed from the ``history.json`` files it lists::

    "configurations": [{"find_best": "runs/cfg/find_best/find_best.json", "command": "...", "note": "...",
                        "sources": ["real", "phantom"],
                        "members": {"2d": {"histories": [".../fold_0/history.json"], "train": "pancreas train ..."}}}]

An optional ``inference`` block compares engine settings (TTA, class weights) on the same fold models, one
``pancreas oof`` report per row (its ``summary`` per source)::

    "inference": {"note": "...", "rows": [{"model": "fold 0, 260 epochs", "setting": "TTA", "oof": "runs/.../oof.json",
                                           "command": "pancreas oof ... --tta"}]}

An optional ``calibration`` block checks the estimate against the hidden real validation set: per model, its
real-data estimate here (a ``pancreas evaluate`` report or the ``real`` block of a ``pancreas oof`` report) next
to the hidden-set figures stated for it (``hidden``: whole / lesion DSC and where they were stated; ``null`` when
none was measured)::

    "calibration": {"note": "...", "rows": [{"model": "phantom-only demo", "trained_on": "72 phantoms",
                                             "estimate": "runs/eval.json", "hidden": {"whole": 0.25,
                                             "lesion": 0.04, "stated": "issue 11"}, "command": "..."}]}

Only aggregates and case ids are written, never images.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.case_tables import CaseTable

if TYPE_CHECKING:
    from training.oof import OOFReport

logger = logging.getLogger(__name__)


def row_metrics(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """(n, whole DSC, lesion DSC) of one ablation row, from the source it names."""
    if "fold_metrics" in row:
        data = json.loads((root / row["fold_metrics"]).read_text())
        block = data.get("by_source", {}).get(row.get("source", "real")) or data["summary"]
        return {"n": block["n_cases"], "whole": block["dice_whole"], "lesion": block["dice_lesion"],
                "grid": "network grid (held-out fold)"}
    if "ablation" in row:  # the row's variant in a `pancreas ablate` report (its trainer folder may be reused)
        found = [r for r in json.loads((root / row["ablation"]).read_text())["rows"] if r["variant"] == row["variant"]]
        if not found:
            raise KeyError(f"variant {row['variant']!r} not in {row['ablation']}")
        block = found[0]["metrics"]
        return {"n": block["n_cases"], "whole": block["dice_whole"], "lesion": block["dice_lesion"],
                "grid": "network grid (held-out fold)"}
    data = json.loads((root / row["evaluation"]).read_text())["summary"]
    return {"n": data["n_cases"], "whole": data["whole_dsc"], "lesion": data["lesion_dsc"],
            "grid": "original grid (pancreas evaluate)"}


def ablation_table(rows: list[dict[str, Any]], root: Path) -> tuple[str, list[dict[str, Any]]]:
    lines = ["| row | change | real cases | whole DSC | lesion DSC | scored on | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    measured = []
    for row in rows:
        try:
            m = row_metrics(row, root)
        except FileNotFoundError:
            logger.warning("row %r: result file missing, skipped", row["row"])
            continue
        except KeyError as exc:  # a report without the row's variant
            logger.warning("row %r: %s, skipped", row["row"], exc)
            continue
        measured.append({**row, **m})
        lines.append(f"| {row['row']} | {row['change']} | {m['n']} | {m['whole']:.4f} | {m['lesion']:.4f} | "
                     f"{m['grid']} | `{row['command']}` |")
    return "\n".join(lines), measured


def inference_table(rows: list[dict[str, Any]], root: Path) -> str:
    """One row per out-of-fold report: the same fold models scored under another engine setting."""
    lines = ["| model | engine setting | real cases | whole DSC | lesion DSC | phantom whole DSC | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        try:
            summary = json.loads((root / row["oof"]).read_text())["summary"]
        except FileNotFoundError:
            logger.warning("inference row %r: %s missing, skipped", row["setting"], row["oof"])
            continue
        real, phantom = summary.get("real"), summary.get("phantom")
        if real is None:
            logger.warning("inference row %r: no real cases in %s, skipped", row["setting"], row["oof"])
            continue
        ph = f"{phantom['whole_dsc']:.4f} (n={phantom['n_cases']})" if phantom else "-"
        lines.append(f"| {row['model']} | {row['setting']} | {real['n_cases']} | {real['whole_dsc']:.4f} | "
                     f"{real['lesion_dsc']:.4f} | {ph} | `{row['command']}` |")
    return "\n".join(lines)


def real_summary(path: Path) -> dict[str, Any] | None:
    """The summary of a ``pancreas evaluate`` report, or the real-data block of a ``pancreas oof`` report or of a
    kept per-case table (``None`` when it scored no real case)."""
    data = json.loads(path.read_text())
    if "model" in data:  # a per-case table kept in git
        return oof_report(path, []).summary().get("real")
    summary = data["summary"]
    return summary if "whole_dsc" in summary else summary.get("real")


def calibration_table(rows: list[dict[str, Any]], root: Path) -> str:
    """Estimate here against the hidden-set figure stated for the same model, and their difference."""
    header = ("| model | trained on | real cases here | estimate whole / lesion DSC | hidden set whole / lesion DSC | "
              "hidden minus estimate | command |")
    lines = [header, "| --- " * 7 + "|"]
    for row in rows:
        try:
            est = real_summary(root / row["estimate"])
        except FileNotFoundError:
            logger.warning("calibration row %r: %s missing, skipped", row["model"], row["estimate"])
            continue
        if est is None:
            logger.warning("calibration row %r: no real cases in %s, skipped", row["model"], row["estimate"])
            continue
        hidden = row.get("hidden")
        if hidden:
            seen = f"{hidden['whole']:.2f} / {hidden['lesion']:.2f} ({hidden['stated']})"
            diff = f"{hidden['whole'] - est['whole_dsc']:+.3f} / {hidden['lesion'] - est['lesion_dsc']:+.3f}"
        else:
            seen, diff = "not measured here", "-"
        lines.append(f"| {row['model']} | {row['trained_on']} | {est['n_cases']} | {est['whole_dsc']:.4f} / "
                     f"{est['lesion_dsc']:.4f} | {seen} | {diff} | `{row['command']}` |")
    return "\n".join(lines)


def plot_rows(measured: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [m["row"] for m in measured]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(y - 0.2, [m["whole"] for m in measured], 0.4, label="whole-pancreas DSC")
    ax.barh(y + 0.2, [m["lesion"] for m in measured], 0.4, label="lesion DSC")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("DSC on real quiz cases (same held-out real cases per row)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_minutes(histories: list[str], root: Path) -> float:
    """Summed epoch time (minutes) of the training runs behind one configuration."""
    return sum(float(e["time_s"]) for h in histories for e in json.loads((root / h).read_text())["epochs"]) / 60.0


def configurations_table(block: dict[str, Any], root: Path) -> str:
    """The find-best table: per candidate and source (``block["sources"]``, default real) its out-of-fold scores,
    subtype macro-F1, engine seconds per case and the members' training minutes."""
    result = json.loads((root / block["find_best"]).read_text())
    members = block.get("members", {})
    minutes = {name: training_minutes(m.get("histories", []), root) for name, m in members.items()}
    header = ("| candidate | data | cases | whole DSC | lesion DSC | whole NSD@2mm | whole HD95 mm | subtype macro-F1 | "
              "s / case (CPU) | CPU training min |")
    lines = [header, "| --- " * 10 + "|"]
    for entry in result["table"]:
        mark = " **(best)**" if entry["candidate"] == result["best"] else ""
        train = sum(minutes.get(m, float("nan")) for m in entry["members"])
        for source in block.get("sources", ["real"]):
            s = entry["sources"].get(source)
            if s is None:
                continue
            n = sum(c["source"] == source for c in result["cases"][entry["candidate"]])
            f1 = "n/a" if s.get("macro_f1") is None else f"{s['macro_f1']:.3f}"
            lines.append(f"| `{entry['candidate']}`{mark} | {source} | {n} | {s['whole_dsc']:.4f} | "
                         f"{s['lesion_dsc']:.4f} | {s['whole_nsd2']:.4f} | {s['whole_hd95']:.1f} | {f1} | "
                         f"{entry['seconds_per_case']:.2f} | {train:.1f} |")
    rows = [f"* `{name}`: `{m['train']}`" for name, m in members.items() if m.get("train")]
    return "\n".join([*lines, "", "Training commands (each row's members):", "", *rows])


def oof_report(path: Path, scored_sources: list[str]) -> OOFReport:
    """A ``pancreas oof`` report, from its ``oof.json`` or from a per-case table kept in git (``case_tables``)."""
    from training.oof import OOFReport  # torch behind it: kept out of the CLI's --help

    if "model" in json.loads(path.read_text()):
        return CaseTable.read(path).report(scored_sources)
    return OOFReport.read(path)


def build(spec: dict[str, Any], root: Path, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {spec['title']}", "", spec["data"], ""]
    if spec.get("oof") and (root / spec["oof"]).is_file():
        report = oof_report(root / spec["oof"], spec.get("scored_sources", ["phantom"]))
        title = spec.get("oof_title", "Out-of-fold validation of the shipped bundle")
        parts += [f"## {title} (original grid, through the inference engine)", "",
                  f"Command: `{spec['oof_command']}`", "", spec.get("oof_note", ""), "", report.markdown(), ""]
    if spec.get("calibration"):
        block = spec["calibration"]
        parts += ["## Does the estimate predict the hidden real validation set?", "", block.get("note", ""), "",
                  calibration_table(block["rows"], root), ""]
    table, measured = ablation_table(spec.get("rows", []), root)
    png = out.with_suffix(".png")
    if measured:
        plot_rows(measured, png)
    parts += ["## Ablation (one change per row, same real held-out cases, same budget)", "",
              spec.get("ablation_note", ""), "", table, "", f"![ablation]({png.name})", ""]
    if spec.get("inference"):
        block = spec["inference"]
        parts += ["## Engine settings on the same fold models (out of fold, original grid)", "", block.get("note", ""),
                  "", inference_table(block["rows"], root), ""]
    for block in spec.get("configurations", []):
        if not (root / block["find_best"]).is_file():
            logger.warning("configurations %r: %s missing, skipped", block.get("title"), block["find_best"])
            continue
        parts += [f"## {block.get('title', 'Configurations and ensembles')}", "", f"Command: `{block['command']}`", "",
                  block.get("note", ""), "", configurations_table(block, root), ""]
    parts += spec.get("footer", [])
    text = "\n".join(parts) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real-quiz.md"))
    parser.add_argument("--root", type=Path, default=Path("."), help="paths in the spec are relative to this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(json.loads(args.spec.read_text()), args.root, args.out)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
