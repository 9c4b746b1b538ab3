"""Per-case tables kept in git and paired comparisons: real oof.json rows in, means and paired differences out."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.case_tables import (
    CaseTable,
    compare_page,
    keep,
    main,
    merge,
    paired,
    recipe_cv_metrics,
    resample,
)
from pancreas.testing import write_nifti


def oof_row(case: str, fold: str, whole: float, lesion: float | None, source: str = "real") -> dict:
    return {"case_id": case, "fold": fold, "source": source, "gt_subtype": 2, "pred_subtype": 0, "pancreas_ml": 60.0,
            "whole_dsc": whole, "lesion_dsc": lesion, "whole_nsd2": 0.5, "lesion_nsd2": 0.4, "whole_hd95": 5.0,
            "lesion_hd95": None, "probabilities": [0.1, 0.2, 0.7], "engine": {"tta": True},
            "pred_path": "runs/x/masks/a.nii.gz"}


def write_oof(path, rows) -> None:
    path.write_text(json.dumps({"bundle": "b", "summary": {}, "cases": rows}))


def test_keep_copies_metric_columns_only(tmp_path) -> None:
    write_oof(tmp_path / "oof.json", [oof_row("quiz_2_002", "1", 0.8, 0.5), oof_row("quiz_2_001", "0", 0.7, None)])
    table = keep(tmp_path / "oof.json", model="m", command="pancreas oof b", note="n")
    path = table.write(tmp_path / "kept" / "m.json")
    back = CaseTable.read(path)
    assert [r["case_id"] for r in back.cases] == ["quiz_2_001", "quiz_2_002"]
    assert back.cases[0]["lesion_dsc"] is None and back.cases[1]["whole_dsc"] == 0.8
    assert "probabilities" not in back.cases[0] and "pred_path" not in back.cases[0]
    assert (back.model, back.command, back.note) == ("m", "pancreas oof b", "n")


def test_paired_differences_and_refusals(tmp_path) -> None:
    base = CaseTable("base", "-", [oof_row("a", "0", 0.70, 0.40), oof_row("b", "0", 0.80, 0.10),
                                    oof_row("c", "1", 0.60, None), oof_row("only_base", "1", 0.1, 0.1),
                                    oof_row("p", "0", 0.90, 0.60, source="phantom")])
    cand = CaseTable("cand", "-", [oof_row("a", "0", 0.75, 0.50), oof_row("b", "0", 0.78, 0.30),
                                    oof_row("c", "1", 0.70, 0.20), oof_row("only_cand", "2", 0.9, 0.9)])
    res = paired(base, cand, "real")
    assert res["n"] == 3 and res["folds"] == ["0", "1"] and res["cases"] == ["a", "b", "c"]
    whole = res["whole_dsc"]
    diffs = [0.05, -0.02, 0.10]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert whole["diff"] == pytest.approx(mean) and whole["se"] == pytest.approx(sd / math.sqrt(3))
    assert whole["baseline"] == pytest.approx(0.70) and whole["candidate"] == pytest.approx(0.7433333)
    assert (whole["better"], whole["worse"]) == (2, 1)
    lesion = res["lesion_dsc"]  # case c has no baseline lesion figure: left out of that pair only
    assert lesion["n"] == 2 and lesion["diff"] == pytest.approx(0.15) and (lesion["better"], lesion["worse"]) == (2, 0)
    with pytest.raises(ValueError, match="share no phantom case"):
        paired(base, cand, "phantom")
    moved = CaseTable("moved", "-", [oof_row("a", "3", 0.7, 0.4)])
    with pytest.raises(ValueError, match="different folds"):
        paired(base, moved, "real")


def test_read_refuses_what_keep_did_not_write(tmp_path) -> None:
    (tmp_path / "oof.json").write_text(json.dumps({"bundle": "b", "cases": []}))
    with pytest.raises(ValueError, match="lacks"):
        CaseTable.read(tmp_path / "oof.json")
    (tmp_path / "short.json").write_text(json.dumps({"model": "m", "command": "c", "cases": [{"case_id": "a"}]}))
    with pytest.raises(ValueError, match="'a' lacks columns"):
        CaseTable.read(tmp_path / "short.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        CaseTable.read(tmp_path / "bad.json")
    (tmp_path / "summary_only.json").write_text(json.dumps({"bundle": "b", "summary": {}}))
    with pytest.raises(ValueError, match="no 'cases'"):
        keep(tmp_path / "summary_only.json", model="m", command="c")


def test_compare_page_renders_each_pair_and_a_plot(tmp_path) -> None:
    CaseTable("base", "pancreas train A", [oof_row("a", "0", 0.70, 0.40), oof_row("b", "0", 0.80, 0.10),
                                            oof_row("p", "0", 0.90, 0.60, source="phantom"),
                                            oof_row("q", "0", 0.80, 0.50, source="phantom")]).write(tmp_path / "b.json")
    CaseTable("cand", "pancreas train B", [oof_row("a", "0", 0.80, 0.50), oof_row("b", "0", 0.90, 0.20),
                                            oof_row("p", "0", 0.85, 0.60, source="phantom"),
                                            oof_row("q", "0", 0.85, 0.50, source="phantom")]).write(tmp_path / "c.json")
    spec = {"title": "Candidates", "data": "real quiz", "footer": ["done"],
            "pairs": [{"name": "B vs A", "baseline": "b.json", "candidate": "c.json", "sources": ["real", "phantom"],
                       "note": "two folds"}]}
    text = compare_page(spec, tmp_path, tmp_path / "out" / "page.md")
    assert "| B vs A | real | 2 (0) | 0.7500 | 0.8500 | +0.1000 ± 0.0000 | 2 / 0 | 0.2500 | 0.3500 |" in text
    assert "| B vs A | phantom | 2 (0) | 0.8500 | 0.8500 | +0.0000 ± 0.0500 | 1 / 1 |" in text
    assert "`pancreas train B`" in text and text.rstrip().endswith("done")
    assert (tmp_path / "out" / "page.png").stat().st_size > 1000


def test_a_metric_no_case_has_on_both_sides_is_named_not_averaged(tmp_path) -> None:
    CaseTable("base", "A", [oof_row("a", "0", 0.70, 0.40), oof_row("b", "0", 0.80, 0.10)]).write(tmp_path / "b.json")
    CaseTable("cand", "B", [oof_row("a", "0", 0.80, None), oof_row("b", "0", 0.90, None)]).write(tmp_path / "c.json")
    res = paired(CaseTable.read(tmp_path / "b.json"), CaseTable.read(tmp_path / "c.json"))
    assert res["lesion_dsc"]["n"] == 0 and math.isnan(res["lesion_dsc"]["diff"])
    spec = {"title": "T", "pairs": [{"name": "B vs A", "baseline": "b.json", "candidate": "c.json"}]}
    text = compare_page(spec, tmp_path, tmp_path / "page.md")
    assert "| 0.7500 | 0.8500 | +0.1000 ± 0.0000 | 2 / 0 | - | - | no case with this figure in both tables | - |" in text
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_merge_joins_other_folds_and_refuses_an_overlap(tmp_path) -> None:
    first = CaseTable("folds 0-1", "A", [oof_row("b", "1", 0.8, 0.5), oof_row("a", "0", 0.7, 0.4)])
    last = CaseTable("fold 2", "B", [oof_row("c", "2", 0.6, 0.3), oof_row("p", "2", 0.9, 0.7, source="phantom")])
    path = merge([first, last], model="recipe, 3 folds", command="A; B").write(tmp_path / "m.json")
    back = CaseTable.read(path)
    assert [(r["source"], r["case_id"]) for r in back.cases] == [("phantom", "p"), ("real", "a"), ("real", "b"),
                                                                   ("real", "c")]
    assert back.extra["merged_from"] == ["folds 0-1", "fold 2"]
    with pytest.raises(ValueError, match="'a' is in both"):
        merge([first, CaseTable("again", "C", [oof_row("a", "0", 0.1, 0.1)])], model="m", command="c")


def test_recipe_cv_metrics_per_source_with_out_of_domain_subtypes() -> None:
    rows = [oof_row("a", "0", 0.6, 0.2), oof_row("b", "1", 0.8, None),
            {**oof_row("p", "0", 0.9, 0.7, source="phantom"), "gt_subtype": 0, "pred_subtype": 0},
            {**oof_row("q", "1", 0.7, 0.5, source="phantom"), "gt_subtype": 1, "pred_subtype": 2},
            {**oof_row("r", "1", 0.8, 0.6, source="phantom"), "gt_subtype": 2, "pred_subtype": 2}]
    metrics = recipe_cv_metrics(CaseTable("m", "c", rows), scored_sources=["phantom"], scope="2 folds")
    assert metrics["real_recipe_cv_whole_dsc"] == pytest.approx(0.7) and metrics["real_recipe_cv_n_cases"] == 2
    assert metrics["real_recipe_cv_lesion_dsc"] == pytest.approx(0.2)  # an undefined lesion DSC is not a zero
    assert metrics["real_recipe_cv_whole_dsc_sd"] == pytest.approx(0.1)
    assert metrics["phantom_recipe_cv_lesion_dsc"] == pytest.approx(0.6)
    assert metrics["real_recipe_cv_subtype"]["classifier_trained"] is False
    assert metrics["real_recipe_cv_subtype"]["macro_f1"] is None  # one subtype present: recall only
    phantom = metrics["phantom_recipe_cv_subtype"]
    assert phantom["classifier_trained"] is True and phantom["recall"] == {"0": 1.0, "1": 0.0, "2": 1.0}
    assert metrics["recipe_cv_scope"] == "2 folds" and not any("_oof_" in k for k in metrics)
    assert "real_recipe_cv_lesion_by_size" not in metrics  # no true lesion volumes in these rows
    rows[0]["lesion_ml_ref"] = 2.0
    by_size = recipe_cv_metrics(CaseTable("m", "c", rows), scored_sources=["phantom"],
                                scope="2 folds")["real_recipe_cv_lesion_by_size"]
    assert [(b["label"], b["n"], b["lesion_dsc"]) for b in by_size if b["n"]] == [("1-3 mL", 1, 0.2)]
    json.dumps(metrics, allow_nan=False)  # recordable in metadata.json as it is


def lesion_mask(path, lesion_voxels: int) -> None:
    """A real NIfTI mask (1 x 1 x 2 mm voxels): a pancreas block with ``lesion_voxels`` lesion voxels in it."""
    m = np.zeros((10, 20, 20), dtype=np.float32)
    m[1:9, 2:18, 2:18] = 1.0000153  # quiz masks store floats
    m.reshape(-1)[np.flatnonzero(m.reshape(-1))[:lesion_voxels]] = 2
    write_nifti(path, m, {"spacing": (1.0, 1.0, 2.0), "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)})


def test_sizes_reads_reference_volumes_and_reweights_to_a_population(tmp_path, capsys) -> None:
    # three real cases of 0.5, 2 and 4 mL (250, 1000, 2000 voxels of 2 mm3); the phantom is not grouped
    labels, population = tmp_path / "labels" / "subtype2", tmp_path / "masks"
    for case, voxels in {"quiz_2_001": 250, "quiz_2_002": 1000, "quiz_2_003": 2000}.items():
        lesion_mask(labels / f"{case}.nii.gz", voxels)
    for case, voxels in {"quiz_2_010": 250, "quiz_2_011": 250, "quiz_2_012": 2000, "quiz_0_013": 1000}.items():
        lesion_mask(population / f"{case}.nii.gz", voxels)
    rows = [oof_row("quiz_2_001", "0", 0.7, 0.0), oof_row("quiz_2_002", "0", 0.8, 0.3),
            oof_row("quiz_2_003", "1", 0.8, 0.7), oof_row("phantom_x", "1", 0.9, 0.9, source="phantom")]
    table = CaseTable("m", "c", rows).write(tmp_path / "t.json")
    assert main(["sizes", str(table), "--labels", str(labels.parent), "--population", str(population),
                 "--population-subtype", "2", "--edges", "1,3", "--write", "--out", str(tmp_path / "s.md"),
                 "--plot", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "| < 1 mL | 1 | 0.5 | 0.000 | 0% | 67% |" in out and "| 3 mL and over" not in out
    assert "| >= 3 mL | 1 | 4.0 | 0.700 | 100% | 33% |" in out
    # subtype-2 population: two lesions under 1 mL, one over 3 mL: (2 * 0.0 + 0.7) / 3
    assert "(subtype 2) (3 lesions): 0.233" in out and (tmp_path / "s.md").read_text() == out
    kept = CaseTable.read(table).by_case("real")
    assert [kept[c]["lesion_ml_ref"] for c in sorted(kept)] == pytest.approx([0.5, 2.0, 4.0])
    assert "lesion_ml_ref" not in CaseTable.read(table).by_case("phantom")["phantom_x"]
    markdown = CaseTable.read(table).report(["phantom"]).markdown()  # the oof report groups them too
    assert "Lesion DSC by true lesion volume (real, out-of-fold)" in markdown and "| 1-3 mL | 1 | 2.0 |" in markdown
    assert "(phantom, out-of-fold)" not in markdown
    assert main(["sizes", str(table)]) == 0  # the volumes are kept now: no masks needed


def test_sizes_refusals(tmp_path) -> None:
    labels = tmp_path / "labels"
    lesion_mask(labels / "quiz_2_001.nii.gz", 10)
    table = CaseTable("m", "c", [oof_row("quiz_2_001", "0", 0.7, 0.0), oof_row("quiz_2_009", "0", 0.7, 0.2)])
    table.write(tmp_path / "t.json")
    with pytest.raises(SystemExit, match="1 real case\\(s\\) have no mask .*quiz_2_009"):
        main(["sizes", str(tmp_path / "t.json"), "--labels", str(labels)])
    with pytest.raises(SystemExit, match="pass the reference masks"):
        main(["sizes", str(tmp_path / "t.json")])
    with pytest.raises(SystemExit, match="--edges"):
        main(["sizes", str(tmp_path / "t.json"), "--edges", "3,1"])
    with pytest.raises(SystemExit, match="no mask of subtype 1"):
        main(["sizes", str(tmp_path / "t.json"), "--population", str(labels), "--population-subtype", "1"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["sizes", str(tmp_path / "t.json"), "--labels", str(tmp_path / "nowhere")])


def test_resample_spread_of_a_small_set(capsys) -> None:
    rows = [oof_row(f"c{i}", "0", 0.8, lesion) for i, lesion in enumerate([0.0, 1.0] * 10)]  # lesion mean 0.5
    table = CaseTable("m", "c", rows)
    one = resample(table, n_cases=1, bars={"lesion_dsc": 0.55, "whole_dsc": 0.80}, draws=4000)
    assert one["lesion_dsc"]["mean"] == 0.5 and one["lesion_dsc"]["n_table"] == 20
    assert (one["lesion_dsc"]["low"], one["lesion_dsc"]["high"]) == (0.0, 1.0)
    assert one["lesion_dsc"]["reaches_bar"] == pytest.approx(0.5, abs=0.03)  # one case: a coin flip
    assert one["whole_dsc"]["reaches_bar"] == 1.0 and one["whole_dsc"]["low"] == pytest.approx(0.8)
    many = resample(table, n_cases=400, bars={"lesion_dsc": 0.55}, draws=2000)["lesion_dsc"]
    assert many["high"] - many["low"] < 0.11 and many["reaches_bar"] < 0.05  # 400 cases pin the mean down
    with pytest.raises(ValueError, match="n_cases >= 1"):
        resample(table, n_cases=0, bars={"lesion_dsc": 0.5})
    with pytest.raises(ValueError, match="no real case"):
        resample(table, n_cases=3, bars={"nope": 0.5})
