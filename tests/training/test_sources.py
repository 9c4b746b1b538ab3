"""Real + phantom datasets: each case keeps its source through convert, splits, training, the bundle's
``training_data`` and the out-of-fold report. A real tiny nnU-Net run on a mixed dataset (phantoms stand
in for the real folder: without ``phantoms.json`` a quiz folder is real data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.crossval_split import generate_crossval_split

from pancreas.errors import DatasetError
from pancreas.sources import PHANTOM_MANIFEST, source_of
from training.subtypes import read_subtype_rows, stratified_splits

MIX_ID = 993


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    from pancreas.phantoms import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("sources")
    phantoms = synthesize(root / "phantoms", SynthConfig(cases_per_subtype=2, splits=("train",), seed=5,
                                                         headers="canonical"))
    real = synthesize(root / "real", SynthConfig(cases_per_subtype=2, splits=("train",), seed=6,
                                                 headers="canonical"))
    (real / PHANTOM_MANIFEST).unlink()  # a quiz folder without the manifest counts as real data
    return real, phantoms


def test_source_of(two_sources) -> None:
    real, phantoms = two_sources
    assert source_of(phantoms) == "phantom" and source_of(phantoms / "train") == "phantom"
    assert source_of(real) == "real" and source_of(phantoms / "train", parents=0) == "real"


def test_convert_merges_sources(two_sources, tmp_path) -> None:
    from training.convert import convert

    real, phantoms = two_sources
    out = convert([real, phantoms], dataset_id=MIX_ID, name="Mix", workdir=tmp_path)
    rows = read_subtype_rows(out)
    by_source = {r.source for r in rows if r.case_id.startswith("phantom_")}
    assert by_source == {"phantom"}
    assert {r.source for r in rows if not r.case_id.startswith("phantom_")} == {"real"}
    assert len(rows) == 12
    assert json.loads((out / "dataset.json").read_text())["sources"] == {"phantom": 6, "real": 6}
    assert (out / "imagesTr" / f"{rows[0].case_id}_0000.nii.gz").is_file()


def test_convert_single_source_keeps_ids(two_sources, tmp_path) -> None:
    from training.convert import convert

    _, phantoms = two_sources
    out = convert(phantoms, dataset_id=MIX_ID, name="Only", workdir=tmp_path)
    rows = read_subtype_rows(out)
    assert {r.source for r in rows} == {"phantom"} and not any(r.case_id.startswith("phantom_") for r in rows)


def test_convert_refuses_clashing_real_folders(two_sources, tmp_path) -> None:
    from training.convert import convert

    real, _ = two_sources
    with pytest.raises(DatasetError, match="appears twice"):
        convert([real, real], dataset_id=MIX_ID, name="Twice", workdir=tmp_path)


def test_stratified_splits_per_source() -> None:
    sources = {f"r{i:02d}": "real" for i in range(12)} | {f"p{i:02d}": "phantom" for i in range(8)}
    splits = stratified_splits(sources)
    assert len(splits) == 5
    val = [c for f in splits for c in f["val"]]
    assert sorted(val) == sorted(sources)  # every case is held out exactly once
    real_only = generate_crossval_split(sorted(c for c in sources if c.startswith("r")), seed=12345, n_splits=5)
    for fold, alone in zip(splits, real_only):
        assert [c for c in fold["val"] if c.startswith("r")] == sorted(alone["val"])
        assert 1 <= sum(c.startswith("p") for c in fold["val"]) <= 2
        assert not set(fold["train"]) & set(fold["val"])
    with pytest.raises(DatasetError, match="cannot split"):
        stratified_splits({"a": "real", "b": "real", "p": "phantom"})


def test_cls_sources_validated() -> None:
    from training.trainer import TrainOptions

    with pytest.raises(DatasetError, match="cls_sources"):
        TrainOptions(cls_sources=("scanner",))


@pytest.fixture(scope="module")
def mixed_run(two_sources, tmp_path_factory):
    """Plan and train fold 0 of the mixed dataset (classifier on phantoms only), export it."""
    from pancreas.bundle import HeadConfig
    from training.convert import convert
    from training.export import export_bundle
    from training.nnunet_env import configure
    from training.planning import TinyOptions, plan_and_preprocess
    from training.runner import train_fold
    from training.trainer import TrainOptions

    root = tmp_path_factory.mktemp("mixed")
    configure(root)
    convert(list(two_sources), dataset_id=MIX_ID, name="Mix", workdir=root)
    plan = plan_and_preprocess(MIX_ID, configurations=("3d_fullres",), tiny=True,
                               tiny_options=TinyOptions(max_features=16, max_patch_voxels=24 * 32 * 32),
                               overwrite_target_spacing=(4.0, 2.0, 2.0), num_processes=2, verify_integrity=False)
    options = TrainOptions(head=HeadConfig(variant="mask", hidden=16), epochs=1, iters_per_epoch=2, val_iters=1,
                           warmup_epochs=0, optimizer="adamw", initial_lr=3e-3, save_every=1000,
                           cls_sources=("phantom",))
    result = train_fold(MIX_ID, fold=0, plans_identifier=plan.plans_identifier, options=options, threads=2)
    bundle = export_bundle(MIX_ID, configuration="3d_fullres", folds=[0], plans_identifier=plan.plans_identifier,
                           out=root / "bundle", licence_note="test data: synthetic", command="pytest")
    return root, plan, result, bundle


@pytest.mark.slow
def test_mixed_training_splits_and_metrics(mixed_run) -> None:
    root, plan, result, _ = mixed_run
    splits = json.loads((root / "nnUNet_preprocessed" / plan.dataset / "splits_final.json").read_text())
    for fold in splits:
        assert {c.startswith("phantom_") for c in fold["val"]} == {True, False}  # both sources in every fold
    by_source = result.metrics["by_source"]
    assert set(by_source) == {"real", "phantom"}
    assert by_source["real"]["n_cases"] + by_source["phantom"]["n_cases"] == result.metrics["summary"]["n_cases"]
    assert all(c["source"] in ("real", "phantom") for c in result.metrics["cases"])


@pytest.mark.slow
def test_real_cases_do_not_train_the_classifier(mixed_run) -> None:
    from training.runner import make_trainer
    from training.trainer import TrainOptions

    _, plan, _, _ = mixed_run
    trainer = make_trainer(MIX_ID, configuration="3d_fullres", fold=0, plans_identifier=plan.plans_identifier,
                           options=TrainOptions(cls_sources=("phantom",)))
    real = next(c for c, s in trainer.sources.items() if s == "real")
    phantom = next(c for c, s in trainer.sources.items() if s == "phantom")
    target = torch.full((2, 1, 4, 4, 4), 2, dtype=torch.long)  # lesion present in both patches
    batch = {"data": torch.zeros(2, 1, 4, 4, 4), "target": target, "keys": [real, phantom]}
    _, _, labels, weight = trainer._batch(batch)
    assert weight.tolist() == [0.0, 1.0]
    assert labels.tolist() == [trainer.subtypes[real], trainer.subtypes[phantom]]


@pytest.mark.slow
def test_bundle_training_data_and_oof(mixed_run, tmp_path) -> None:
    from training.oof import out_of_fold
    from training.subtypes import read_sources, read_subtypes

    root, plan, _, bundle = mixed_run
    data = bundle.metadata.training_data
    assert data["sources"] == {"phantom": 6, "real": 6}
    assert data["tasks"]["classification"]["trained_on"] == ["phantom"]
    assert data["tasks"]["segmentation"]["trained_on"] == ["phantom", "real"]
    assert data["licence"] == "test data: synthetic"
    assert len(data["domain"]["spacing_mm"]["min"]) == 3
    raw = root / "nnUNet_raw" / plan.dataset
    splits = json.loads((root / "nnUNet_preprocessed" / plan.dataset / "splits_final.json").read_text())
    report = out_of_fold(bundle, raw, splits, out=tmp_path / "oof", subtypes=read_subtypes(raw),
                         sources=read_sources(raw), scored_sources=("phantom",))
    assert sorted(r["case_id"] for r in report.rows) == sorted(splits[0]["val"])
    summary = report.summary()
    assert set(summary) == {"real", "phantom"}
    assert summary["real"]["subtype"]["classifier_trained"] is False  # flagged: not trained on real cases
    assert summary["phantom"]["subtype"]["classifier_trained"] is True
    assert summary["phantom"]["subtype"]["n_cases"] == sum(c.startswith("phantom_") for c in splits[0]["val"])
    assert "out-of-domain" in report.markdown()
    for row in report.rows:
        assert 0.0 <= row["whole_dsc"] <= 1.0
        assert row["lesion_ml_ref"] > 0 and row["lesion_ml_pred"] >= 0  # every phantom has a lesion
    assert "Lesion DSC by true lesion volume (phantom, out-of-fold)" in report.markdown()
    text = (tmp_path / "oof" / "oof.md").read_text()
    assert "| real |" in text and "| phantom |" in text
    assert (tmp_path / "oof" / "oof_dsc.png").stat().st_size > 1000


@pytest.mark.slow
def test_oof_resume_reuses_only_matching_rows(mixed_run, tmp_path) -> None:
    """``resume`` keeps the rows scored by the same fold weights and settings and predicts the rest; a changed
    setting (TTA) invalidates every row."""
    from pancreas.engine_config import EngineConfig
    from training.oof import out_of_fold
    from training.subtypes import read_sources, read_subtypes

    root, plan, _, bundle = mixed_run
    raw = root / "nnUNet_raw" / plan.dataset
    splits = json.loads((root / "nnUNet_preprocessed" / plan.dataset / "splits_final.json").read_text())
    kwargs = {"out": tmp_path / "oof", "subtypes": read_subtypes(raw), "sources": read_sources(raw)}
    first = out_of_fold(bundle, raw, splits, **kwargs)
    report = json.loads((tmp_path / "oof" / "oof.json").read_text())
    dropped = report["cases"].pop(0)["case_id"]
    (tmp_path / "oof" / "oof.json").write_text(json.dumps(report))
    masks = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "oof" / "masks").iterdir()}
    second = out_of_fold(bundle, raw, splits, resume=True, **kwargs)
    rewritten = {p.name for p in (tmp_path / "oof" / "masks").iterdir() if p.stat().st_mtime_ns != masks[p.name]}
    assert rewritten == {f"{dropped}.nii.gz"}  # only the dropped case ran again
    by_case = {r["case_id"]: r for r in first.rows}
    for row in second.rows:
        assert row["whole_dsc"] == pytest.approx(by_case[row["case_id"]]["whole_dsc"])
    assert second.summary().keys() == first.summary().keys()
    out_of_fold(bundle, raw, splits, resume=True, config=EngineConfig(backend="torch", device="cpu", tta=True),
                **kwargs)
    assert all(p.stat().st_mtime_ns != masks[p.name] for p in (tmp_path / "oof" / "masks").iterdir())


@pytest.mark.slow
def test_fold_full_trains_on_every_case(mixed_run, tmp_path, capsys) -> None:
    """``pancreas train --fold full`` is nnU-Net's fold ``all`` (fold_all, nothing held out, its scores marked so);
    ``--source-weights`` is recorded; ``export-bundle --folds full --tta`` exports it with TTA as its default."""
    from pancreas.bundle import Bundle
    from pancreas.cli import main

    root, plan, _, _ = mixed_run
    common = ["--workdir", str(root), "--plans", plan.plans_identifier]
    assert main(["train", str(MIX_ID), *common, "--fold", "full", "--epochs", "1", "--iters-per-epoch", "2",
                 "--val-iters", "1", "--warmup-epochs", "0", "--optimizer", "adamw", "--threads", "2",
                 "--cls-sources", "phantom", "--source-weights", "phantom=0.5"]) == 0
    folder = next((root / "nnUNet_results" / plan.dataset).glob(f"MultiTaskTrainer__{plan.plans_identifier}__3d_fullres"))
    metrics = json.loads((folder / "fold_all" / "validation_metrics.json").read_text())["summary"]
    assert metrics["held_out"] is False and metrics["n_cases"] == 12  # every case, all trained on
    held_out = json.loads((folder / "fold_0" / "validation_metrics.json").read_text())["summary"]
    assert held_out["held_out"] is True and held_out["n_cases"] < 12
    options = json.loads((folder / "fold_all" / "train_options.json").read_text())
    assert options["source_weights"] == {"phantom": 0.5}
    out = tmp_path / "bundle_full"
    assert main(["export-bundle", "--dataset", str(MIX_ID), *common, "--folds", "full", "--tta",
                 "--class-weights", "1,1,4", "--scales", "1,1.25", "--mirror-axes", "1,2",
                 "--min-component-fraction", "0.3", "--max-piece-distance-mm", "30", "--out", str(out)]) == 0
    bundle = Bundle.load(out)
    assert [a.fold for a in bundle.metadata.artifacts] == ["all"]
    assert bundle.metadata.inference["tta"] is True  # engines mirror by default for this bundle
    assert bundle.metadata.inference["class_weights"] == [1.0, 1.0, 4.0]
    assert bundle.metadata.inference["scales"] == [1.0, 1.25]
    assert bundle.metadata.inference["mirror_axes"] == [1, 2]
    assert bundle.metadata.inference["postprocessing"] == {"min_component_fraction": 0.3, "max_piece_distance_mm": 30.0}
    from pancreas.domain import InputDomain
    from pancreas.engine import Engine, EngineConfig

    engine = Engine.from_bundle(bundle, EngineConfig(backend="torch", device="cpu"))
    post = engine.post
    assert engine.scales == (1.0, 1.25) and engine.window.mirror_axes == (1, 2)
    assert post.min_component_fraction == 0.3 and post.max_piece_distance_mm == 30.0
    # pieces are capped at the top of the training domain's plausible pancreas volume
    domain = InputDomain.from_training_data(bundle.metadata.training_data)
    assert post.max_total_ml == domain.plausible_pancreas_ml()[1] == domain.pancreas_ml.max * 1.25
    assert main(["export-bundle", "--dataset", str(MIX_ID), *common, "--folds", "full", "--max-piece-distance-mm",
                 "30", "--out", str(tmp_path / "bad")]) == 1
    assert "needs --min-component-fraction" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["export-bundle", "--dataset", str(MIX_ID), *common, "--folds", "full", "--min-component-fraction",
                 "2", "--out", str(tmp_path / "bad")]) == 1
    assert "min_component_fraction 2.0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert bundle.metadata.metrics["folds"]["all"]["held_out"] is False
