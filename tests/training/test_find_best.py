"""``pancreas find-best`` on a tiny converted dataset (3 real + 3 phantom cases, 2 folds) with two random-init
fold bundles as the "configurations": out-of-fold table per candidate and source, and the chosen bundle."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.bundle import Bundle
from pancreas.engine import Engine, EngineConfig
from pancreas.errors import DatasetError
from pancreas.nifti import same_grid
from pancreas.sources import PHANTOM_MANIFEST
from pancreas.testing import make_random_bundle, tiny_plans, write_case
from training.find_best import CRITERION, candidates, criterion, find_best, parse_models, write_chosen

CPU = EngineConfig(backend="torch", device="cpu", num_threads=1)
DATASET_ID = 996


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """A real and a phantom quiz folder (one case per subtype each), converted; 2 folds split per source."""
    from training.convert import convert
    from training.nnunet_env import configure
    from training.subtypes import read_sources, read_subtypes, stratified_splits

    root = tmp_path_factory.mktemp("find_best")
    for folder in ("real", "phantoms"):
        for k in range(3):
            cid, split = f"quiz_{k}_{k + 1:03d}", root / folder / "train" / f"subtype{k}"
            write_case(split / f"{cid}_0000.nii.gz", (20, 36, 40), (2.0, 2.0, 3.0), seed=k,
                       mask_path=split / f"{cid}.nii.gz")
    (root / "phantoms" / PHANTOM_MANIFEST).write_text("{}")
    paths = configure(root / "work")
    raw = convert([root / "real", root / "phantoms"], dataset_id=DATASET_ID, name="FindBest", workdir=root / "work")
    sources = read_sources(raw)
    splits = stratified_splits(sources, n_splits=2)
    (paths.preprocessed / raw.name).mkdir(parents=True)
    (paths.preprocessed / raw.name / "splits_final.json").write_text(json.dumps(splits))
    kw = {"patch_size": (16, 32, 32), "features": (4, 8, 16)}
    bundles = {name: make_random_bundle(root / name, seed=seed, folds=2, plans=tiny_plans(spacing=(mm,) * 3, **kw))
               for name, seed, mm in (("fine", 0, 4.0), ("coarse", 3, 5.0))}
    return SimpleNamespace(root=root, raw=raw, sources=sources, subtypes=read_subtypes(raw), splits=splits,
                           bundles=bundles)


@pytest.fixture(scope="module")
def result(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fb_out")
    return find_best(data.bundles, data.raw, data.splits, out=out, subtypes=data.subtypes, sources=data.sources,
                     config=CPU)


def test_table_per_candidate_and_source(result, data) -> None:
    table = {e["candidate"]: e for e in result.table()}
    assert list(table) == ["fine", "coarse", "fine+coarse"]
    n_cases = sum(len(f["val"]) for f in data.splits)
    for entry in table.values():
        assert entry["n_cases"] == n_cases == 6 and entry["seconds_per_case"] > 0
        assert set(entry["sources"]) == {"real", "phantom"} and entry["score_on"] == "real"
        for block in entry["sources"].values():
            assert 0.0 <= block["whole_dsc"] <= 1.0 and block["whole_hd95"] is not None
            assert block["macro_f1"] is not None  # all three subtypes per source
    assert all(len(result.seconds[c]) == n_cases for c in table)
    scores = [table[c]["score"] for c in table]
    assert result.best == list(table)[int(np.argmax(scores))]
    saved = json.loads(Path(result.files["json"]).read_text())
    assert saved["best"] == result.best and saved["criterion"] == CRITERION and len(saved["table"]) == 3
    md = Path(result.files["markdown"]).read_text()
    assert f"**Best: `{result.best}`**" in md and "| fine+coarse" in md and "s/case" in md


def test_single_candidate_equals_out_of_fold(result, data, tmp_path) -> None:
    from training.oof import out_of_fold

    report = out_of_fold(data.bundles["fine"], data.raw, data.splits, out=tmp_path, subtypes=data.subtypes,
                         sources=data.sources, config=CPU)
    oof = {r["case_id"]: r for r in report.rows}
    for row in result.rows["fine"]:
        ref = oof[row["case_id"]]
        assert (row["fold"], row["source"], row["pred_subtype"]) == (ref["fold"], ref["source"], ref["pred_subtype"])
        assert row["whole_dsc"] == pytest.approx(ref["whole_dsc"], abs=1e-3)


def _predicts(bundle: Bundle, data, tmp_path: Path) -> None:
    image = next((data.raw / "imagesTr").glob("*_0000.nii.gz"))
    Engine.from_bundle(bundle, CPU).predict_file(image, tmp_path / "mask.nii.gz")
    assert same_grid(sitk.ReadImage(str(tmp_path / "mask.nii.gz")), sitk.ReadImage(str(image)))


def test_chosen_bundle_loads_and_predicts(result, data, tmp_path) -> None:
    best = Bundle.load(result.files["bundle"])
    assert best.metadata.metrics["find_best"]["criterion"] == CRITERION
    assert best.is_ensemble == ("+" in result.best)
    _predicts(best, data, tmp_path)
    for forced in ("fine+coarse", "coarse"):  # each kind of choice writes a servable bundle
        chosen = Bundle.load(write_chosen(replace(result, best=forced), data.bundles, tmp_path / forced))
        assert chosen.is_ensemble == (forced == "fine+coarse")
        assert list(chosen.members) == (["fine", "coarse"] if chosen.is_ensemble else [])
        _predicts(chosen, data, tmp_path / forced)


def test_cli_single_configurations(data, tmp_path) -> None:
    from pancreas.cli import main

    rc = main(["find-best", "--dataset", str(DATASET_ID), "--workdir", str(data.root / "work"), "--out",
               str(tmp_path), "--no-ensembles", "--threads", "1", "-m", f"a={data.bundles['fine'].root}",
               "-m", f"b={data.bundles['coarse'].root}"])
    assert rc == 0
    saved = json.loads((tmp_path / "find_best.json").read_text())
    assert [e["candidate"] for e in saved["table"]] == ["a", "b"] and saved["best"] in {"a", "b"}
    assert not Bundle.load(tmp_path / "best").is_ensemble
    rc = main(["find-best", "--dataset", str(DATASET_ID), "--workdir", str(data.root / "work"), "--out",
               str(tmp_path), "-m", f"a={data.bundles['fine'].root}"])
    assert rc == 1  # best/ already exists


def test_mismatched_folds_are_refused(data, tmp_path) -> None:
    one_fold = make_random_bundle(tmp_path / "one", folds=1, plans=tiny_plans(spacing=(4.0, 4.0, 4.0)))
    with pytest.raises(DatasetError, match="different folds"):
        find_best({"fine": data.bundles["fine"], "one": one_fold}, data.raw, data.splits, out=tmp_path / "o",
                  subtypes=data.subtypes, sources=data.sources, config=CPU)


def test_candidates_and_criterion() -> None:
    assert [c.name for c in candidates(["a", "b", "c"])] == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    assert [c.name for c in candidates(["a", "b"], ensembles=False)] == ["a", "b"]
    rows = [{"source": "real", "whole_dsc": 0.8, "lesion_dsc": float("nan")},
            {"source": "real", "whole_dsc": 0.6, "lesion_dsc": 0.4},
            {"source": "phantom", "whole_dsc": 0.0, "lesion_dsc": 0.0}]
    assert criterion(rows) == (pytest.approx((0.7 + 0.4) / 2), "real")
    assert criterion(rows[2:]) == (0.0, "all")
    assert parse_models(["x=/a/b", "/c/d"]) == {"x": Path("/a/b"), "d": Path("/c/d")}
    with pytest.raises(DatasetError, match="unique NAME"):
        parse_models(["x=/a", "x=/b"])
