"""``pancreas optimize``: thin CLI over :func:`optimize.recipes.optimize_bundle`."""

from __future__ import annotations

import json

from pancreas.cli import main


def test_cli_reports_a_bad_recipe_as_an_error(bundle, tmp_path, capsys):
    code = main(["optimize", str(bundle.root), "--recipe", "onnx,int4", "--out", str(tmp_path / "o")])
    assert code == 1
    assert "unknown recipe 'int4'" in capsys.readouterr().err


def test_cli_exports_onnx_and_prints_the_stage_records(bundle, phantoms, tmp_path, capsys):
    out = tmp_path / "onnx"
    code = main(["optimize", str(bundle.root), "--recipe", "onnx", "--out", str(out), "--data", str(phantoms),
                 "--val-cases", "2", "--calib-cases", "1", "--train-cases", "1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bundle"] == str(out)
    assert printed["stages"][0]["recipe"] == "onnx" and printed["stages"][0]["parity_agreement"] >= 0.999
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["provenance"]["command"].startswith("pancreas")


def test_cli_fine_tune_on_a_missing_nnunet_dataset_is_a_clear_error(bundle, phantoms, tmp_path, capsys):
    code = main(["optimize", str(bundle.root), "--recipe", "prune:0.5", "--out", str(tmp_path / "o"),
                 "--data", str(phantoms), "--val-cases", "1", "--finetune-dataset", "977",
                 "--finetune-workdir", str(tmp_path / "work"), "--epochs", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no dataset with id 977" in err and "pancreas convert" in err
