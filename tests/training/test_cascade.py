"""A REAL tiny cascade on CPU: synth -> plan --tiny with low-res and 2d -> train 3d_lowres (fold all) -> train
3d_cascade_fullres -> export-bundle -> predicted by a real server on an oblique, non-RAS CT; then a trained 2d
model joins the low-res and the cascade bundles in an ensemble bundle, served the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from pancreas.bundle import Bundle, write_ensemble
from pancreas.errors import DatasetError
from pancreas.nifti import same_grid
from pancreas.testing import (
    OBLIQUE_DIRECTION,
    REPO_ROOT,
    ServerProcess,
    clean_env,
    decode_mask,
    post_ct,
    write_case,
)

DATASET_ID = 991
SPACING = (4.0, 2.0, 2.0)  # 3d_fullres; 3d_lowres at 2x
OPTIONS = {"epochs": 2, "iters_per_epoch": 2, "val_iters": 1, "warmup_epochs": 0, "optimizer": "adamw",
           "initial_lr": 3e-3, "save_every": 1000}


@pytest.mark.slow
def test_tiny_cascade_end_to_end(tmp_path: Path) -> None:
    from pancreas.bundle import HeadConfig
    from pancreas.phantoms import SynthConfig, synthesize
    from training.convert import convert_quiz
    from training.export import export_bundle
    from training.nnunet_env import configure
    from training.planning import TinyOptions, plan_and_preprocess
    from training.runner import fold_output_folder, train_fold
    from training.trainer import TrainOptions

    t0 = time.time()
    synthesize(tmp_path / "quiz", SynthConfig(cases_per_subtype=2, splits=("train",), seed=5, headers="canonical"))
    paths = configure(tmp_path / "work")
    convert_quiz(tmp_path / "quiz", dataset_id=DATASET_ID, name="CascadePhantoms", workdir=tmp_path / "work")
    plan = plan_and_preprocess(DATASET_ID, configurations=("2d", "3d_lowres", "3d_cascade_fullres"), tiny=True,
                               tiny_options=TinyOptions(max_features=16, max_patch_voxels=24 * 32 * 32,
                                                        lowres_factor=2.0),
                               overwrite_target_spacing=SPACING, num_processes=1, verify_integrity=False)
    plans = json.loads(plan.plans_file.read_text())["configurations"]
    assert plans["3d_lowres"]["next_stage"] == "3d_cascade_fullres"
    assert plans["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    assert plans["3d_lowres"]["spacing"] == pytest.approx([2 * s for s in plans["3d_fullres"]["spacing"]])
    for cfg in ("3d_lowres", "3d_fullres"):  # the cascade reads 3d_fullres's preprocessed data
        assert (paths.preprocessed / plan.dataset / plans[cfg]["data_identifier"]).is_dir(), cfg

    options = TrainOptions(head=HeadConfig(variant="mask", hidden=16), **OPTIONS)
    common = {"fold": "all", "plans_identifier": plan.plans_identifier, "options": options, "threads": 1, "seed": 0}
    with pytest.raises(DatasetError, match=r"needs the 3d_lowres stage's predictions.*predicted_next_stage"
                                           r"/3d_cascade_fullres.*Train 3d_lowres first"):
        train_fold(DATASET_ID, configuration="3d_cascade_fullres", **common)

    low = train_fold(DATASET_ID, configuration="3d_lowres", **common)
    next_stage = low.output_folder.parent / "predicted_next_stage" / "3d_cascade_fullres"
    cases = sorted(c["case"] for c in low.metrics["cases"])
    assert len(cases) == 6  # fold all: every case, in-sample
    assert sorted(p.name.split(".")[0] for p in next_stage.iterdir() if p.suffix == ".b2nd") == cases

    full = train_fold(DATASET_ID, configuration="3d_cascade_fullres", **common)
    config = json.loads((full.output_folder / "network_config.json").read_text())
    assert config["input_channels"] == 3 and full.metrics["summary"]["n_cases"] == 6
    assert full.output_folder == fold_output_folder(DATASET_ID, configuration="3d_cascade_fullres", fold="all",
                                                    plans_identifier=plan.plans_identifier)

    bundle = export_bundle(DATASET_ID, configuration="3d_cascade_fullres", folds=["all"],
                           plans_identifier=plan.plans_identifier, out=tmp_path / "bundle", command="pytest cascade")
    assert bundle.metadata.previous_stage == "stages/3d_lowres"
    assert Bundle.load(tmp_path / "bundle").previous_stage.metadata.network.configuration == "3d_lowres"

    ct = write_case(tmp_path / "oblique.nii.gz", (20, 48, 44), (1.7, 1.5, 3.0), direction=OBLIQUE_DIRECTION, seed=4)
    body = _serve_and_check_grid(tmp_path / "bundle", ct, tmp_path / "served_cascade")
    timings, parts = body["timings_ms"], body["parts_ms"]
    assert set(parts) == {"3d_lowres", "3d_cascade_fullres"}
    assert all(v >= 0 for v in timings.values()) and timings["inference"] > 0
    assert parts["3d_lowres"]["inference"] > 0 and parts["3d_cascade_fullres"]["inference"] > 0
    assert timings["inference"] == pytest.approx(parts["3d_lowres"]["inference"]
                                                 + parts["3d_cascade_fullres"]["inference"], rel=0.01)
    assert timings["total"] >= sum(p["total"] for p in parts.values()) * 0.99

    # every configuration trained for real, served together: a 2d + 3d_lowres + cascade ensemble bundle
    train_fold(DATASET_ID, configuration="2d", **common)
    members = {"2d": export_bundle(DATASET_ID, configuration="2d", folds=["all"], out=tmp_path / "b2d",
                                   plans_identifier=plan.plans_identifier, command="pytest 2d"),
               "3d_lowres": export_bundle(DATASET_ID, configuration="3d_lowres", folds=["all"], out=tmp_path / "blow",
                                          plans_identifier=plan.plans_identifier, command="pytest lowres"),
               "3d_cascade_fullres": bundle}
    write_ensemble(tmp_path / "ensemble", members, name="tiny-configurations", command="pytest ensemble")
    body = _serve_and_check_grid(tmp_path / "ensemble", ct, tmp_path / "served_ensemble")
    assert set(body["parts_ms"]) == set(members)
    assert all(part["inference"] > 0 for part in body["parts_ms"].values())
    print(f"tiny cascade and configuration ensemble end to end in {time.time() - t0:.0f}s")


def _serve_and_check_grid(bundle: Path, ct: Path, workdir: Path) -> dict:
    """POST ``ct`` to a real ``pancreas serve`` of ``bundle``; the mask must be on exactly the input's grid."""
    (workdir / "tmp").mkdir(parents=True)
    env = clean_env(num_threads=1, log_level="warning", tmp_dir=workdir / "tmp", device="cpu", backend="torch")
    with ServerProcess.serve(bundle, env=env, log=workdir / "server.log", cwd=REPO_ROOT) as server:
        server.wait_ready(120)
        with server.client() as client:
            response = post_ct(client, ct.read_bytes())
            assert client.get("/healthz").status_code == 200
    assert response.status_code == 200, response.text
    body = response.json()
    mask, image = decode_mask(body["mask"], workdir), sitk.ReadImage(str(ct))
    assert same_grid(mask, image, tol=1e-5)  # size, spacing, origin, direction
    return body
