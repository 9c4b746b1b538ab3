"""Ensemble bundles over configurations: loading and refusing them, and the ensemble engine's averaging."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pancreas.bundle import METADATA, Bundle, write_ensemble
from pancreas.domain import InputDomain, record_domain
from pancreas.engine import Engine, EngineConfig
from pancreas.engine_config import ENGINE_STAGES
from pancreas.ensemble_engine import EnsembleEngine
from pancreas.errors import BundleError
from pancreas.nifti import read_volume, same_grid
from pancreas.testing import (
    OBLIQUE_DIRECTION,
    cascade_plans,
    make_random_bundle,
    make_random_cascade_bundle,
    write_case,
)

CPU = EngineConfig(backend="torch", device="cpu", num_threads=1)
NARROW = {"extent_mm": {"max": [10.0, 10.0, 10.0]}}  # every test CT is far outside: one `fov` warning per member


@pytest.fixture(scope="module")
def members(tmp_path_factory, make_plans) -> dict[str, Bundle]:
    """Two random-init bundles of different seeds, one at another spacing, both with a narrow input domain."""
    root = tmp_path_factory.mktemp("members")
    fine = make_random_bundle(root / "fine", seed=1, plans=make_plans(spacing=(2.0, 1.5, 1.5)))
    coarse = make_random_bundle(root / "coarse", seed=7, plans=make_plans(spacing=(3.0, 2.5, 2.5)))
    return {name: record_domain(b.root, InputDomain.model_validate(NARROW))
            for name, b in (("fine", fine), ("coarse", coarse))}


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory) -> Bundle:
    return write_ensemble(tmp_path_factory.mktemp("ens") / "ens", members, name="ens-test")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = write_case(tmp_path_factory.mktemp("ct") / "ct.nii.gz", (14, 30, 34), (1.6, 1.4, 2.4), OBLIQUE_DIRECTION)
    return path, read_volume(path)


def test_layout_and_members(ensemble: Bundle, members) -> None:
    assert ensemble.is_ensemble and list(ensemble.members) == ["fine", "coarse"]
    assert ensemble.metadata.members == ["members/fine", "members/coarse"] and not ensemble.metadata.artifacts
    assert (ensemble.root / "members" / "fine" / "models" / "fold_0.pt").is_file()
    assert ensemble.plans == members["fine"].plans  # the first member's plans: label handling only
    assert not Bundle.load(members["fine"].root).is_ensemble


def test_probabilities_are_the_members_average(ensemble: Bundle, volume) -> None:
    _, vol = volume
    engine = Engine.from_bundle(ensemble, CPU)
    assert isinstance(engine, EnsembleEngine)
    fine, coarse = engine.members["fine"], engine.members["coarse"]
    assert fine.plan.target_spacing != coarse.plan.target_spacing
    s1, s2 = fine.predict_soft(vol), coarse.predict_soft(vol)
    soft = engine.predict_soft(vol)
    np.testing.assert_allclose(soft.probabilities, (s1.probabilities + s2.probabilities) / 2, atol=1e-6)
    np.testing.assert_allclose(soft.class_probabilities, (s1.class_probabilities + s2.class_probabilities) / 2,
                               atol=1e-6)
    pred = engine.predict(vol)
    expected = np.argmax(s1.probabilities + s2.probabilities, axis=0)
    assert pred.mask.shape == vol.shape
    changed = pred.mask != expected
    assert (pred.mask[changed] == 0).all() and changed.mean() < 0.5  # only post-processing removes voxels
    np.testing.assert_allclose(pred.probabilities, (s1.class_probabilities + s2.class_probabilities) / 2,
                               atol=1e-6)
    assert pred.subtype == int(np.argmax(pred.probabilities))


def test_warnings_once_and_timings_per_member(ensemble: Bundle, volume) -> None:
    _, vol = volume
    engine = Engine.from_bundle(ensemble, CPU)
    single = engine.members["fine"].predict(vol)
    assert [w.code for w in single.warnings].count("fov") == 1
    pred = engine.predict(vol)
    assert [w.code for w in pred.warnings].count("fov") == 1, pred.warnings
    assert set(pred.parts_ms) == {"fine", "coarse"}
    for part in pred.parts_ms.values():
        assert set(part) - {"total"} <= set(ENGINE_STAGES) and part["inference"] > 0
        assert part["total"] == pytest.approx(sum(v for k, v in part.items() if k != "total"))
    assert set(pred.timings_ms) - {"total"} <= set(ENGINE_STAGES)
    assert pred.timings_ms["inference"] == pytest.approx(sum(p["inference"] for p in pred.parts_ms.values()))
    assert pred.timings_ms["export"] > sum(p["export"] for p in pred.parts_ms.values())  # + its own argmax
    assert "postprocess" in pred.timings_ms and "postprocess" not in pred.parts_ms["fine"]


def test_predict_file_geometry_and_info(ensemble: Bundle, volume, tmp_path: Path) -> None:
    src, _ = volume
    engine = Engine.from_bundle(ensemble.root, CPU)
    engine.warmup()
    pred = engine.predict_file(src, tmp_path / "mask.nii.gz")
    assert same_grid(sitk.ReadImage(str(tmp_path / "mask.nii.gz")), sitk.ReadImage(str(src)))
    assert {"read", "write", "inference", "total"} <= set(pred.timings_ms)
    info = engine.info
    assert info["name"] == "ens-test" and set(info["members"]) == {"fine", "coarse"}
    assert info["members"]["coarse"]["configuration"] == "3d_fullres" and info["folds"] == 2
    assert engine.check_input(read_volume(src)) == max(
        (m.check_input(read_volume(src)) for m in engine.members.values()), key=lambda g: np.prod(g))


def test_cascade_first_member(members, volume, tmp_path: Path) -> None:
    """The top level copies its first member's plans; a cascade's there does not make the ensemble a cascade."""
    cascade = make_random_cascade_bundle(tmp_path / "cascade", plans=cascade_plans(patch_size=(16, 32, 32),
                                                                                  features=(4, 8, 16)))
    ensemble = write_ensemble(tmp_path / "ens", {"cascade": cascade, "fine": members["fine"]}, name="c")
    assert ensemble.previous_stage is None and ensemble.members["cascade"].previous_stage is not None
    pred = Engine.from_bundle(ensemble, CPU).predict(volume[1])
    assert set(pred.parts_ms) == {"cascade", "fine"} and pred.mask.shape == volume[1].shape


# ---- malformed ensembles --------------------------------------------------------------------------------
def _edit(root: Path, **changes) -> None:
    meta = json.loads((root / METADATA).read_text())
    meta.update(changes)
    (root / METADATA).write_text(json.dumps(meta))


def _relabel(root: Path) -> None:
    meta = json.loads((root / "members" / "coarse" / METADATA).read_text())
    meta["labels"] = {"background": 0, "pancreas": 1, "tumour": 2}
    (root / "members" / "coarse" / METADATA).write_text(json.dumps(meta))


def _outside_link(root: Path) -> None:
    shutil.move(root / "members" / "coarse", root.parent / "elsewhere")
    os.symlink(root.parent / "elsewhere", root / "members" / "coarse")


def _break_member(root: Path) -> None:
    (root / "members" / "coarse" / "models" / "fold_0.pt").unlink()


MALFORMED = {
    "missing member": (lambda r: _edit(r, members=["members/fine", "members/ghost"]), "members/ghost.*missing"),
    "parent escape": (lambda r: _edit(r, members=["members/fine", "../other"]), "escapes the bundle folder"),
    "absolute path": (lambda r: _edit(r, members=["members/fine", "/tmp"]), "escapes the bundle folder"),
    "the root itself": (lambda r: _edit(r, members=["members/fine", "."]), "escapes the bundle folder"),
    "symlink out": (_outside_link, "escapes the bundle folder"),
    "other labels": (_relabel, "labels .* only models of the same task"),
    "one member": (lambda r: _edit(r, members=["members/fine"]), "at least two"),
    "own artifacts": (lambda r: _edit(r, artifacts=[{"kind": "torch", "path": "members/fine/models/fold_0.pt"}]),
                      "both members and artifacts"),
    "duplicate names": (lambda r: _edit(r, members=["members/fine", "members/fine/../fine"]), "unique"),
    "broken member": (_break_member, "member 'members/coarse' is not a valid bundle.*fold_0.pt"),
    "previous stage too": (lambda r: _edit(r, previous_stage="members/fine"), "both members and a previous_stage"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ensembles_are_refused(case: str, ensemble: Bundle, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(ensemble.root, root, symlinks=True)
    damage, message = MALFORMED[case]
    damage(root)
    with pytest.raises(BundleError, match=message):
        Bundle.load(root)


def test_write_ensemble_refuses_bad_requests(members, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="at least two"):
        write_ensemble(tmp_path / "one", {"fine": members["fine"]}, name="x")
    with pytest.raises(BundleError, match="plain folder name"):
        write_ensemble(tmp_path / "slash", {"a/b": members["fine"], "c": members["coarse"]}, name="x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        write_ensemble(tmp_path / "full", dict(members), name="x")


def test_predict_cli_runs_an_ensemble_bundle(ensemble: Bundle, volume, tmp_path: Path) -> None:
    from pancreas.cli import main

    src, _ = volume
    rc = main(["predict", "-i", str(src), "-o", str(tmp_path), "--model", str(ensemble.root), "--backend", "torch",
               "--device", "cpu", "--threads", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "predictions.json").read_text())
    assert [set(m["members"]) for m in summary["models"]] == [{"fine", "coarse"}]
    assert same_grid(sitk.ReadImage(str(tmp_path / "ct.nii.gz")), sitk.ReadImage(str(src)))
