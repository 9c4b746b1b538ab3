"""Per-case out-of-fold tables kept in git, and paired comparisons of two recipes on the same held-out cases.

``pancreas oof`` writes ``oof.json`` under ``runs/``, which is not in git and goes with the machine. ``keep`` copies
the metric columns of its cases (case id, source, fold, DSC / NSD / HD95, subtypes, predicted gland volume, true
and predicted lesion volume where the report has them; never a mask or an image) into a small JSON table under ``benchmarks/results/real-quiz-cases/``, so that a new recipe
can be set against it later, on another machine. ``compare`` renders a page of paired comparisons: for each pair, the cases
both tables scored (same case, same fold), the two means, the mean paired difference with its standard error, and
how many cases got better or worse::

    python -m benchmarks.case_tables keep runs/oof/oof.json --out benchmarks/results/real-quiz-cases/x.json \\
        --model "..." --command "pancreas oof ..."
    python -m benchmarks.case_tables compare --spec benchmarks/real_quiz_candidates.json \\
        --out benchmarks/results/real-quiz-candidates.md

``merge`` joins one recipe's tables of different folds; ``recipe-cv`` turns a table into the ``recipe_cv_*`` metrics
a bundle trained on every case records (``pancreas export-bundle --metrics``). ``sizes`` groups a table's cases by
true lesion volume (read from the reference masks where the table lacks it) and re-weights the lesion DSC to the
lesion sizes of another set of masks::

    python -m benchmarks.case_tables sizes benchmarks/results/real-quiz-cases/x.json \\
        --labels ../shared/data/quiz-real/train --population ../shared/data/quiz-real/masks --population-subtype 2

``resample`` says what a small set of ``n`` new cases like these would show: the 95 % range of its mean and how often
it reaches a bar (cases drawn with replacement from the table's; the spread of a hidden validation set's own mean)::

    python -m benchmarks.case_tables resample benchmarks/results/real-quiz-cases/x.json --cases 12 \\
        --bar whole_dsc=0.80 --bar lesion_dsc=0.55

The spec: ``{"title": ..., "data": ..., "pairs": [{"name": ..., "baseline": "x.json", "candidate": "y.json",
"sources": ["real", "phantom"], "note": ...}], "footer": [...]}`` (table paths relative to ``--root``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pancreas.errors import DatasetError
from pancreas.evaluation import discover_reference, reference_volumes_ml
from pancreas.lesion_size import (
    FOUND_DSC,
    PRED_KEY,
    REF_KEY,
    SIZE_EDGES_ML,
    check_edges,
    size_strata,
    strata_markdown,
)
from pancreas.quiz import QUIZ_MASK

if TYPE_CHECKING:
    from training.oof import OOFReport

logger = logging.getLogger(__name__)

#: the columns a kept table holds per case (metrics may be null: undefined, or not recorded)
COLUMNS = ("case_id", "source", "fold", "whole_dsc", "lesion_dsc", "whole_nsd2", "lesion_nsd2", "whole_hd95",
           "lesion_hd95", "gt_subtype", "pred_subtype", "pancreas_ml")
#: columns kept when the report has them (reference and predicted lesion volume, mL)
OPTIONAL_COLUMNS = (REF_KEY, PRED_KEY)
#: the metrics a paired comparison reports
PAIRED_KEYS = ("whole_dsc", "lesion_dsc")


@dataclass(frozen=True)
class CaseTable:
    """One model's (or recipe's) out-of-fold rows: ``COLUMNS`` per case, plus what made them."""

    model: str
    command: str
    cases: list[dict[str, Any]]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> CaseTable:
        """A kept table; ``ValueError`` naming the file and the gap when it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON ({exc}); expected a table written by `case_tables keep`") from exc
        missing = [k for k in ("model", "command", "cases") if k not in data]
        if missing:
            raise ValueError(f"{path} lacks {missing}; expected a table written by `case_tables keep`")
        for row in data["cases"]:
            gaps = [c for c in COLUMNS if c not in row]
            if gaps:
                raise ValueError(f"{path}: case {row.get('case_id', '?')!r} lacks columns {gaps}")
        extra = {k: v for k, v in data.items() if k not in ("model", "command", "cases", "note")}
        return cls(data["model"], data["command"], data["cases"], data.get("note", ""), extra)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"model": self.model, "command": self.command, "note": self.note, **self.extra, "cases": self.cases}
        path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
        return path

    def by_case(self, source: str) -> dict[str, dict[str, Any]]:
        return {r["case_id"]: r for r in self.cases if r["source"] == source}

    def report(self, scored_sources: Sequence[str]) -> OOFReport:
        """The table as a ``pancreas oof`` report (summaries per source, its markdown); subtypes count as
        scored only for ``scored_sources``, those that trained the classifier."""
        from training.oof import OOFReport  # torch behind it: kept out of the CLI's --help

        rows = [{**r, "subtype_scored": r["source"] in scored_sources} for r in self.cases]
        return OOFReport.from_json_rows(rows, self.model)


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def keep(oof_json: str | Path, *, model: str, command: str, note: str = "") -> CaseTable:
    """The metric columns of a ``pancreas oof`` report's cases (paths, probabilities and engine prints dropped)."""
    data = json.loads(Path(oof_json).read_text())
    if "cases" not in data:
        raise ValueError(f"{oof_json} has no 'cases'; expected the oof.json of `pancreas oof`")
    cases = [{c: _clean(r.get(c)) for c in (*COLUMNS, *OPTIONAL_COLUMNS) if c in COLUMNS or c in r}
             for r in data["cases"]]
    return CaseTable(model, command, sorted(cases, key=lambda r: (r["source"], r["case_id"])), note)


def merge(tables: Sequence[CaseTable], *, model: str, command: str, note: str = "") -> CaseTable:
    """One recipe's tables of different folds (say folds 0-3 scored on one machine, fold 4 on another) as one.

    Raises:
        ValueError: a case scored in two of the tables (the tables overlap: not the same recipe's other folds).
    """
    seen: dict[str, str] = {}
    for table in tables:
        for row in table.cases:
            if row["case_id"] in seen:
                raise ValueError(f"case {row['case_id']!r} is in both {seen[row['case_id']]!r} and {table.model!r}: "
                                 "merge the tables of different folds only")
            seen[row["case_id"]] = table.model
    cases = sorted((r for t in tables for r in t.cases), key=lambda r: (r["source"], r["case_id"]))
    return CaseTable(model, command, cases, note, {"merged_from": [t.model for t in tables]})


def recipe_cv_metrics(table: CaseTable, *, scored_sources: Sequence[str], scope: str) -> dict[str, Any]:
    """The ``{source}_recipe_cv_*`` figures a bundle trained on every case records for its recipe (pass the file
    to ``pancreas export-bundle --metrics``): means, sds and subtype block per source, and ``recipe_cv_scope``
    saying what was held out. Subtypes count as scored only for ``scored_sources`` (those that trained the
    classifier; the others' recall is flagged out-of-domain)."""
    return {**table.report(scored_sources).bundle_metrics(prefix="recipe_cv"), "recipe_cv_scope": scope}


def paired(baseline: CaseTable, candidate: CaseTable, source: str = "real") -> dict[str, Any]:
    """Means, mean paired difference (candidate - baseline) and its standard error over the cases both scored.

    Raises:
        ValueError: no case in common, or a case held out by different folds (not the same split).
    """
    base, cand = baseline.by_case(source), candidate.by_case(source)
    common = sorted(set(base) & set(cand))
    if not common:
        raise ValueError(f"{baseline.model!r} and {candidate.model!r} share no {source} case")
    moved = [c for c in common if str(base[c]["fold"]) != str(cand[c]["fold"])]
    if moved:
        raise ValueError(f"cases {moved[:5]} are held out by different folds in {baseline.model!r} and "
                         f"{candidate.model!r}: not the same split, so the pairs are not comparable")
    out: dict[str, Any] = {"source": source, "n": len(common), "cases": common,
                           "folds": sorted({str(base[c]["fold"]) for c in common})}
    for key in PAIRED_KEYS:
        pairs = np.array([(base[c][key], cand[c][key]) for c in common
                          if base[c][key] is not None and cand[c][key] is not None], dtype=float).reshape(-1, 2)
        diff = pairs[:, 1] - pairs[:, 0]
        if not len(diff):  # no case has this figure on both sides (say, no lesion DSC in one table)
            out[key] = {"n": 0, "baseline": math.nan, "candidate": math.nan, "diff": math.nan, "se": math.nan,
                        "better": 0, "worse": 0}
            continue
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out[key] = {"n": len(diff), "baseline": float(pairs[:, 0].mean()), "candidate": float(pairs[:, 1].mean()),
                    "diff": float(diff.mean()), "se": se, "better": int((diff > 0).sum()),
                    "worse": int((diff < 0).sum())}
    return out


def _cell(m: dict[str, Any]) -> str:
    if not m["n"]:
        return "- | - | no case with this figure in both tables | -"
    diff = round(m["diff"], 4) + 0.0  # no "-0.0000"
    return (f"{m['baseline']:.4f} | {m['candidate']:.4f} | {diff:+.4f} ± {m['se']:.4f} | "
            f"{m['better']} / {m['worse']}")


def plot_pairs(results: list[tuple[str, dict[str, Any], CaseTable, CaseTable]], path: Path) -> None:
    """Candidate against baseline per case (one panel per metric); points above the diagonal improved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legend_h = 0.25 * len(results) + 0.2
    fig, axes = plt.subplots(1, len(PAIRED_KEYS), figsize=(4.2 * len(PAIRED_KEYS), 4.2 + legend_h))
    for ax, key in zip(np.atleast_1d(axes), PAIRED_KEYS):
        for name, res, base, cand in results:
            b, c = base.by_case(res["source"]), cand.by_case(res["source"])
            pts = [(b[k][key], c[k][key]) for k in res["cases"] if b[k][key] is not None and c[k][key] is not None]
            if not pts:  # nothing to draw for this metric (see the table's "no case" cell)
                continue
            ax.scatter(*zip(*pts), s=14, alpha=0.7, label=f"{name}: {res['source']} cases")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"baseline {key}", ylabel=f"candidate {key}")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (4.2 + legend_h), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def with_lesion_volumes(table: CaseTable, labels: str | Path, source: str = "real") -> CaseTable:
    """``table`` with ``lesion_ml_ref`` filled in, from the masks in ``labels``, for its ``source`` cases that
    lack it.

    Raises:
        ValueError: a case to fill has no mask in ``labels``.
    """
    todo = {r["case_id"] for r in table.cases if r["source"] == source and r.get(REF_KEY) is None}
    if not todo:
        return table
    volumes = reference_volumes_ml(labels)
    missing = sorted(todo - set(volumes))
    if missing:
        raise ValueError(f"{len(missing)} {source} case(s) have no mask in {labels}: {missing[:5]}")
    cases = [{**r, REF_KEY: volumes[r["case_id"]]} if r["source"] == source and r["case_id"] in todo else r
             for r in table.cases]
    return CaseTable(table.model, table.command, cases, table.note, table.extra)


def population_volumes(masks: str | Path, subtype: int | None = None) -> list[float]:
    """Lesion volumes (mL) of the masks in ``masks``; with ``subtype``, only quiz masks of that subtype
    (``quiz_{subtype}_NNN``, or a ``subtype{k}`` folder)."""
    volumes = reference_volumes_ml(masks)
    if subtype is None:
        return list(volumes.values())
    _, folder_subtypes = discover_reference(masks)

    def subtype_of(case: str) -> int | None:
        match = QUIZ_MASK.match(case)
        return folder_subtypes.get(case, int(match.group(1)) if match else None)

    out = [v for c, v in volumes.items() if subtype_of(c) == subtype]
    if not out:
        raise ValueError(f"no mask of subtype {subtype} in {masks}")
    return out


def sizes_page(table: CaseTable, *, source: str = "real", edges: Sequence[float] = SIZE_EDGES_ML,
               population_ml: Sequence[float] | None = None, population: str = "population") -> str:
    """The markdown of a table's lesion DSC by true lesion volume (cases of ``source``)."""
    rows = [r for r in table.cases if r["source"] == source]
    if not any(r.get(REF_KEY) is not None for r in rows):
        raise ValueError(f"no {source} case of {table.model!r} has {REF_KEY}: pass the reference masks (--labels)")
    strata = size_strata(rows, edges)
    return (f"{table.model}, {source} cases:\n\n"
            + strata_markdown(strata, population_ml, population=population) + "\n")


def plot_sizes(table: CaseTable, path: Path, *, source: str = "real", edges: Sequence[float] = SIZE_EDGES_ML,
               found_dsc: float = FOUND_DSC) -> Path:
    """Lesion DSC against true lesion volume (log scale) per case, with the bin edges and each bin's mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table.cases if r["source"] == source and r.get(REF_KEY) and r["lesion_dsc"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([r[REF_KEY] for r in rows], [r["lesion_dsc"] for r in rows], s=16, alpha=0.7,
               label=f"{source} cases ({len(rows)})")
    for b in size_strata(rows, edges, found_dsc):
        if b.n:
            hi = b.high_ml if math.isfinite(b.high_ml) else max(r[REF_KEY] for r in rows) * 1.2
            lo = b.low_ml if b.low_ml > 0 else min(r[REF_KEY] for r in rows) / 1.2
            ax.hlines(b.lesion_dsc, lo, hi, color="C1", lw=2)
    for edge in edges:
        ax.axvline(edge, color="grey", lw=0.6, ls=":")
    ax.axhline(found_dsc, color="C3", lw=0.8, ls="--", label=f"found: DSC >= {found_dsc:g}")
    ax.plot([], [], color="C1", lw=2, label="bin mean")
    ax.set(xscale="log", ylim=(-0.02, 1), xlabel="true lesion volume (mL)", ylabel="lesion DSC",
           title=f"{table.model[:70]}" + ("..." if len(table.model) > 70 else ""))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def resample(table: CaseTable, *, n_cases: int, bars: dict[str, float], source: str = "real", draws: int = 20000,
             seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric in ``bars``: the mean over the table's ``source`` cases, and over ``draws`` sets of ``n_cases`` drawn
    with replacement the 2.5 / 97.5 percentiles of the set's mean and the share of sets whose mean reaches the bar.

    Raises:
        ValueError: ``n_cases`` < 1, or a metric no case of ``source`` has.
    """
    if n_cases < 1 or draws < 1:
        raise ValueError(f"need n_cases >= 1 and draws >= 1, got {n_cases} and {draws}")
    rng = np.random.default_rng(seed)
    out = {}
    for key, bar in bars.items():
        values = np.array([r[key] for r in table.cases if r["source"] == source and r.get(key) is not None], float)
        if not len(values):
            raise ValueError(f"no {source} case of {table.model!r} has {key!r}")
        means = values[rng.integers(0, len(values), size=(draws, n_cases))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[key] = {"mean": float(values.mean()), "n_table": len(values), "low": float(low), "high": float(high),
                    "bar": bar, "reaches_bar": float((means >= bar).mean())}
    return out


def _bar(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected METRIC=VALUE, e.g. lesion_dsc=0.55") from None


def compare_page(spec: dict[str, Any], root: Path, out: Path) -> str:
    """The markdown page of every pair in ``spec`` (and its plot next to it)."""
    header = ("| pair | data | cases (folds) | " + " | ".join(
        f"baseline {k} | candidate {k} | difference ± SE | better / worse" for k in PAIRED_KEYS) + " |")
    lines = [f"# {spec['title']}", "", spec.get("data", ""), "", header,
             "| --- " * (3 + 4 * len(PAIRED_KEYS)) + "|"]
    results, details = [], []
    for pair in spec["pairs"]:
        base, cand = CaseTable.read(root / pair["baseline"]), CaseTable.read(root / pair["candidate"])
        for source in pair.get("sources", ["real"]):
            res = paired(base, cand, source)
            results.append((pair["name"], res, base, cand))
            cells = " | ".join(_cell(res[k]) for k in PAIRED_KEYS)
            lines.append(f"| {pair['name']} | {source} | {res['n']} ({', '.join(res['folds'])}) | {cells} |")
        details += [f"### {pair['name']}", "", pair.get("note", ""), "",
                    f"- baseline: {base.model}: `{base.command}`" + (f" ({base.note})" if base.note else ""),
                    f"- candidate: {cand.model}: `{cand.command}`" + (f" ({cand.note})" if cand.note else ""), ""]
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_pairs(results, png)
    lines += ["", f"![candidate against baseline per case]({png.name})", "", *details, *spec.get("footer", [])]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keep", help="copy an oof.json's per-case metrics into a table kept in git")
    k.add_argument("oof", type=Path)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--model", required=True)
    k.add_argument("--command", required=True, help="the commands that made the fold models and the report")
    k.add_argument("--note", default="")
    m = sub.add_parser("merge", help="one recipe's tables of different folds as one table")
    m.add_argument("tables", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--model", required=True)
    m.add_argument("--command", required=True)
    m.add_argument("--note", default="")
    r = sub.add_parser("recipe-cv", help="a table's per-source means as the recipe_cv_* metrics of a bundle "
                                         "(for `pancreas export-bundle --metrics`)")
    r.add_argument("table", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--scored-sources", default="phantom", help="sources that trained the classifier (%(default)s)")
    r.add_argument("--scope", required=True, help="what the figures are: recipe, folds, what each fold held out")
    c = sub.add_parser("compare", help="render the paired comparisons a spec lists")
    c.add_argument("--spec", type=Path, required=True)
    c.add_argument("--out", type=Path, default=Path("benchmarks/results/real-quiz-candidates.md"))
    c.add_argument("--root", type=Path, default=Path("."), help="table paths in the spec are relative to this")
    z = sub.add_parser("sizes", help="lesion DSC and found rate by true lesion volume, optionally re-weighted to "
                                     "another set's lesion sizes")
    z.add_argument("table", type=Path)
    z.add_argument("--labels", type=Path, help="reference masks for the cases that lack lesion_ml_ref "
                                               "(a quiz split folder or a flat folder of masks)")
    z.add_argument("--source", default="real", help="which cases to group (%(default)s)")
    z.add_argument("--population", type=Path, help="masks whose lesion sizes to re-weight to")
    z.add_argument("--population-subtype", type=int, help="only the population's masks of this subtype")
    z.add_argument("--edges", default=",".join(f"{e:g}" for e in SIZE_EDGES_ML), help="bin edges, mL (%(default)s)")
    z.add_argument("--write", action="store_true", help="save the filled-in volumes into the table")
    z.add_argument("--out", type=Path, help="also write the markdown here")
    z.add_argument("--plot", type=Path, help="draw lesion DSC against true lesion volume into this PNG")
    s = sub.add_parser("resample", help="the spread of the mean of a small set of cases like a table's")
    s.add_argument("table", type=Path)
    s.add_argument("--cases", type=int, required=True, help="cases per drawn set (the size of the set to predict)")
    s.add_argument("--bar", type=_bar, action="append", required=True, metavar="METRIC=VALUE",
                   help="a metric column and the mean it should reach, e.g. lesion_dsc=0.55 (repeatable)")
    s.add_argument("--source", default="real")
    s.add_argument("--draws", type=int, default=20000)
    s.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "keep":
        path = keep(args.oof, model=args.model, command=args.command, note=args.note).write(args.out)
    elif args.cmd == "merge":
        tables = [CaseTable.read(t) for t in args.tables]
        path = merge(tables, model=args.model, command=args.command, note=args.note).write(args.out)
    elif args.cmd == "recipe-cv":
        metrics = recipe_cv_metrics(CaseTable.read(args.table), scope=args.scope,
                                    scored_sources=[s for s in args.scored_sources.split(",") if s])
        metrics["recipe_cv_table"] = args.table.as_posix()  # where the per-case figures are kept
        path = args.out
        path.write_text(json.dumps(metrics, indent=1) + "\n")
    elif args.cmd == "sizes":
        return _sizes(args)
    elif args.cmd == "resample":
        try:
            found = resample(CaseTable.read(args.table), n_cases=args.cases, bars=dict(args.bar), source=args.source,
                             draws=args.draws, seed=args.seed)
        except ValueError as exc:
            raise SystemExit(f"resample: {exc}") from exc
        for key, r in found.items():
            sys.stdout.write(f"{key}: mean {r['mean']:.3f} over {r['n_table']} {args.source} cases; a set of "
                             f"{args.cases} like them: 95% of means in [{r['low']:.3f}, {r['high']:.3f}], "
                             f"{r['reaches_bar']:.0%} reach {r['bar']:g} ({args.draws} draws)\n")
        return 0
    else:
        path = args.out
        compare_page(json.loads(args.spec.read_text()), args.root, path)
    logger.info("wrote %s", path)
    return 0


def _sizes(args: argparse.Namespace) -> int:
    try:
        edges = check_edges([float(e) for e in args.edges.split(",") if e.strip()])
    except ValueError as exc:
        raise SystemExit(f"--edges: {exc}") from exc
    try:
        text = _sizes_text(args, edges)
    except (ValueError, DatasetError) as exc:
        raise SystemExit(f"sizes: {exc}") from exc
    sys.stdout.write(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def _sizes_text(args: argparse.Namespace, edges: tuple[float, ...]) -> str:
    table = CaseTable.read(args.table)
    if args.labels is not None:
        table = with_lesion_volumes(table, args.labels, args.source)
        if args.write:
            table.write(args.table)
            logger.info("wrote the lesion volumes into %s", args.table)
    population = None
    if args.population is not None:
        population = population_volumes(args.population, args.population_subtype)
    name = (f"{args.population}" + (f" (subtype {args.population_subtype})"
                                     if args.population_subtype is not None else "")) if population else ""
    if args.plot is not None:
        plot_sizes(table, args.plot, source=args.source, edges=edges)
    return sizes_page(table, source=args.source, edges=edges, population_ml=population, population=name)


if __name__ == "__main__":
    raise SystemExit(main())
