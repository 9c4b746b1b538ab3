"""The real-data results page: rows read from the result files they name, missing ones skipped, a plot."""

from __future__ import annotations

import json

from benchmarks.real_quiz import build


def test_page_rows_and_oof(tmp_path) -> None:
    fold = {"summary": {"n_cases": 21, "dice_whole": 0.5, "dice_lesion": 0.4},
            "by_source": {"real": {"n_cases": 12, "dice_whole": 0.61, "dice_lesion": 0.32}}}
    (tmp_path / "fold.json").write_text(json.dumps(fold))
    evaluation = {"summary": {"n_cases": 60, "whole_dsc": 0.25, "lesion_dsc": 0.04}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    ablation = {"rows": [{"variant": "finetune", "metrics": {"n_cases": 12, "dice_whole": 0.704, "dice_lesion": 0.487}}]}
    (tmp_path / "ablation.json").write_text(json.dumps(ablation))
    row = {"case_id": "quiz_2_001", "fold": "0", "source": "real", "gt_subtype": 2, "pred_subtype": 2,
           "pancreas_ml": 70.0, "subtype_scored": False, "prediction_missing": False,
           **{k: 0.7 for k in ("whole_dsc", "lesion_dsc", "whole_nsd2", "lesion_nsd2", "whole_hd95", "lesion_hd95")}}
    undefined = {**row, "case_id": "quiz_2_002", "lesion_hd95": None}  # NaN is written as null
    (tmp_path / "oof.json").write_text(json.dumps({"bundle": "b", "cases": [row, undefined]}))
    summary = {"real": {"n_cases": 12, "whole_dsc": 0.803, "lesion_dsc": 0.42},
               "phantom": {"n_cases": 9, "whole_dsc": 0.9, "lesion_dsc": 0.6}}
    (tmp_path / "oof_tta.json").write_text(json.dumps({"bundle": "b", "summary": summary, "cases": [row]}))
    (tmp_path / "oof_ph.json").write_text(json.dumps({"bundle": "b", "summary": {"phantom": summary["phantom"]}}))
    spec = {"title": "Real quiz", "data": "real quiz CT", "oof": "oof.json", "oof_command": "pancreas oof b",
            "rows": [{"row": "real only", "change": "none", "command": "pancreas ablate 502", "source": "real",
                      "fold_metrics": "fold.json"},
                     {"row": "phantom only", "change": "no real", "command": "pancreas evaluate",
                      "evaluation": "eval.json"},
                     {"row": "fine-tuned", "change": "pre-trained", "command": "pancreas ablate 502 --variants finetune",
                      "ablation": "ablation.json", "variant": "finetune"},
                     {"row": "other variant", "change": "-", "command": "-", "ablation": "ablation.json",
                      "variant": "baseline"},
                     {"row": "missing", "change": "-", "command": "-", "evaluation": "nope.json"}],
            "inference": {"note": "same folds", "rows": [
                {"model": "fold 0", "setting": "TTA", "oof": "oof_tta.json", "command": "pancreas oof b --tta"},
                {"model": "fold 0", "setting": "phantoms only", "oof": "oof_ph.json", "command": "-"},
                {"model": "fold 0", "setting": "gone", "oof": "nope.json", "command": "-"}]},
            "calibration": {"note": "hidden set", "rows": [
                {"model": "old demo", "trained_on": "phantoms", "estimate": "eval.json", "command": "pancreas evaluate",
                 "hidden": {"whole": 0.30, "lesion": 0.02, "stated": "issue 11"}},
                {"model": "5-fold", "trained_on": "real", "estimate": "oof_tta.json", "command": "pancreas oof b",
                 "hidden": None},
                {"model": "phantom oof", "trained_on": "-", "estimate": "oof_ph.json", "command": "-"},
                {"model": "lost", "trained_on": "-", "estimate": "nope.json", "command": "-"}]}}
    text = build(spec, tmp_path, tmp_path / "out" / "real-quiz.md")
    assert "| real only | none | 12 | 0.6100 | 0.3200 |" in text  # the real block, not the mixed summary
    assert "| phantom only | no real | 60 | 0.2500 | 0.0400 |" in text
    assert "| fine-tuned | pre-trained | 12 | 0.7040 | 0.4870 | network grid (held-out fold) |" in text
    assert "| missing |" not in text and "| other variant |" not in text  # no file / no such variant: no row
    assert "| fold 0 | TTA | 12 | 0.8030 | 0.4200 | 0.9000 (n=9) | `pancreas oof b --tta` |" in text
    assert "phantoms only" not in text and "| gone |" not in text  # no real block / no file: no row
    assert "| quiz_2_001 | real | 0 | 0.7000 |" in text and "| quiz_2_002 | real | 0 | 0.7000 |" in text
    # calibration: an evaluate report and the real block of an oof report, hidden minus estimate
    assert ("| old demo | phantoms | 60 | 0.2500 / 0.0400 | 0.30 / 0.02 (issue 11) | +0.050 / -0.020 | "
            "`pancreas evaluate` |") in text
    assert "| 5-fold | real | 12 | 0.8030 / 0.4200 | not measured here | - |" in text
    assert "| lost |" not in text and "| phantom oof |" not in text  # no file / no real block: no row
    assert (tmp_path / "out" / "real-quiz.png").stat().st_size > 1000


def test_top_table_from_a_per_case_table_kept_in_git(tmp_path) -> None:
    """The estimate's section renders from a kept table as from an oof.json; subtypes of sources that did not
    train the classifier are flagged out-of-domain."""
    from benchmarks.case_tables import COLUMNS, CaseTable

    def case(cid: str, source: str, whole: float, subtype: int) -> dict:
        return {**dict.fromkeys(COLUMNS), "case_id": cid, "source": source, "fold": "1", "whole_dsc": whole,
                "lesion_dsc": 0.5, "gt_subtype": subtype, "pred_subtype": 2, "pancreas_ml": 60.0}

    CaseTable("recipe", "pancreas train", [case("quiz_2_001", "real", 0.8, 2), case("quiz_2_002", "real", 0.6, 2),
                                           case("phantom_quiz_0_001", "phantom", 0.9, 0)]).write(tmp_path / "t.json")
    spec = {"title": "T", "data": "real quiz CT", "oof": "t.json", "oof_command": "pancreas oof b",
            "calibration": {"rows": [{"model": "recipe", "trained_on": "real", "estimate": "t.json", "command": "-",
                                      "hidden": {"whole": 0.75, "lesion": 0.6, "stated": "issue"}}]}}
    text = build(spec, tmp_path, tmp_path / "page.md")
    assert "| recipe | real | 2 | 0.7000 / 0.5000 | 0.75 / 0.60 (issue) | +0.050 / +0.100 | `-` |" in text
    assert "| real | 2 | 0.7000 ± 0.1000 | 0.5000 ± 0.0000 | n/a ± n/a |" in text
    assert "subtype 2: recall 1.000 (n=2) (the classifier was not trained on this source" in text
    assert "phantom: no macro-F1" in text and "subtype 0: recall 0.000 (n=1)" in text
    assert "| quiz_2_002 | real | 1 | 0.6000 | 0.5000 |" in text
