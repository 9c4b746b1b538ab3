"""Recipe chaining end to end: a real optimized bundle, loaded and served by the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimize.distill import DistillConfig
from optimize.quantize import Int8Config
from optimize.recipes import OptimizeOptions, RecipeError, optimize_bundle, parse_recipes

RECORD_KEYS = {"recipe", "precision", "artifact", "parity", "accuracy", "latency_ms_per_patch", "versions", "seconds"}


def _options(phantoms: Path) -> OptimizeOptions:
    return OptimizeOptions(data=phantoms, calib_cases=3, calib_per_case=1, val_cases=3, val_per_case=1,
                           train_cases=3, train_per_case=1, parity_patches=2, finetune=DistillConfig(steps=2),
                           int8=Int8Config(methods=("minmax",)), command="pytest recipe chain")


def test_parse_recipes_validates_names_and_order():
    assert [str(r) for r in parse_recipes("prune:0.3,onnx,int8")] == ["prune:0.3", "onnx", "int8"]
    with pytest.raises(RecipeError, match="unknown recipe"):
        parse_recipes("onnx,int4")
    with pytest.raises(RecipeError, match="put prune/distill first"):
        parse_recipes("onnx,prune:0.3")


@pytest.fixture(scope="module")
def chained(bundle, phantoms, tmp_path_factory):
    return optimize_bundle(bundle, "prune:0.5,onnx,int8", tmp_path_factory.mktemp("chain") / "opt",
                           options=_options(phantoms))


def test_chained_recipes_write_a_servable_bundle(chained, phantoms):
    from pancreas.bundle import Bundle
    from pancreas.engine import Engine, EngineConfig
    from pancreas.nifti import read_volume

    out = chained
    loaded = Bundle.load(out.root)
    records = loaded.metadata.optimization
    assert [r["recipe"] for r in records] == ["prune:0.5", "onnx", "int8"]
    assert all(RECORD_KEYS <= set(r) for r in records)
    assert records[1]["parity"]["passed"] and records[2]["precision"] == "int8"
    assert records[0]["structure"]["params_after"] < records[0]["structure"]["params_before"]
    assert loaded.metadata.network.arch_kwargs_override["features_per_stage"]
    assert {(a.kind, a.precision) for a in loaded.metadata.artifacts} >= {("torch", "fp32"), ("onnx", "int8")}
    int8_faster = records[2]["latency_ms_per_patch"]["speedup"] >= 1.0  # measured by the stage itself
    assert loaded.metadata.inference["recommended"] == {"backend": "onnxruntime",
                                                        "precision": "int8" if int8_faster else "fp32"}
    int8_art = next(a for a in loaded.metadata.artifacts if a.precision == "int8")
    assert (out.root / int8_art.info["calibration_cache"]).is_file()
    image = next((phantoms / "validation").rglob("*_0000.nii.gz"))
    volume = read_volume(image)
    for config in (EngineConfig(backend="onnxruntime", precision="int8", step_size=1.0),
                   EngineConfig(backend="torch", device="cpu", step_size=1.0)):
        engine = Engine.from_bundle(loaded, config)
        prediction = engine.predict(volume)
        assert prediction.mask.shape == volume.shape and len(prediction.probabilities) == 3


def test_output_folder_must_be_new(bundle, phantoms, tmp_path):
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "keep.txt").write_text("x")
    with pytest.raises(RecipeError, match="not empty"):
        optimize_bundle(bundle, "onnx", tmp_path / "opt", options=_options(phantoms))


def test_int8_bundle_is_served_by_a_real_server(chained, phantoms, tmp_path):
    """``pancreas serve --model <int8 bundle> --backend onnxruntime --precision int8`` answers a prediction."""
    import base64
    import gzip

    from pancreas.testing import ServerProcess, clean_env

    env = clean_env(TMP_DIR=tmp_path, NUM_THREADS=1, LOG_LEVEL="warning")
    args = ["--backend", "onnxruntime", "--precision", "int8", "--device", "cpu", "--step-size", "1.0"]
    with ServerProcess.serve(chained.root, args=args, env=env, log=tmp_path / "server.log") as server:
        server.wait_ready(120)
        with server.client() as client:
            info = client.get("/v1/model").json()
            assert (info["backend"], info["precision"]) == ("onnxruntime", "int8")
            image = next((phantoms / "validation").rglob("*_0000.nii.gz"))
            reply = client.post("/v1/predict", files={"file": (image.name, image.read_bytes(), "application/gzip")})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["subtype"] in (0, 1, 2) and len(body["probabilities"]) == 3
            assert gzip.decompress(base64.b64decode(body["mask"]))[:4]  # a real .nii.gz payload


def test_compiled_artifact_is_served_by_the_torch_export_backend(bundle, phantoms, tmp_path):
    """``--recipe compile`` writes a torch.export program that ``--backend torch_export`` serves (same masks)."""
    import numpy as np

    from pancreas.bundle import Bundle
    from pancreas.engine import Engine, EngineConfig
    from pancreas.nifti import read_volume

    out = Bundle.load(optimize_bundle(bundle, "compile", tmp_path / "compiled", options=_options(phantoms)).root)
    art = next(a for a in out.metadata.artifacts if a.kind == "torch_export")
    assert art.info["format"] == "exported_program" and out.metadata.optimization[0]["parity"]["passed"]
    volume = read_volume(next((phantoms / "validation").rglob("*_0000.nii.gz")))
    compiled = Engine.from_bundle(out, EngineConfig(backend="torch_export", device="cpu", step_size=1.0))
    eager = Engine.from_bundle(out, EngineConfig(backend="torch", device="cpu", step_size=1.0))
    assert type(compiled.backend.network).__name__ == "ProgramModule"
    a, b = compiled.predict(volume), eager.predict(volume)
    assert np.mean(a.mask == b.mask) >= 0.999 and a.subtype == b.subtype
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


def test_missing_compiled_artifact_is_a_clear_bundle_error(tmp_path):
    from pancreas.backends.torch_backend import load_program
    from pancreas.errors import BundleError

    with pytest.raises(BundleError, match="does not exist"):
        load_program(tmp_path / "model.pt2")
    (tmp_path / "model.pt2").write_bytes(b"x")
    with pytest.raises(BundleError, match="unknown compiled format"):
        load_program(tmp_path / "model.pt2", fmt="tflite")


def test_recommendation_skips_int8_that_measured_slower():
    from optimize.recipes import _recommended
    from pancreas.bundle import Artifact

    arts = [Artifact(kind="torch", path="models/fold_0.pt"), Artifact(kind="onnx", path="models/model.onnx"),
            Artifact(kind="onnx", path="models/model_int8.onnx", precision="int8")]
    slower = [{"recipe": "int8", "latency_ms_per_patch": {"before": 22.0, "after": 49.0, "speedup": 0.45}}]
    faster = [{"recipe": "int8:minmax", "latency_ms_per_patch": {"before": 60.0, "after": 40.0, "speedup": 1.5}}]
    assert _recommended(arts, slower) == {"backend": "onnxruntime", "precision": "fp32"}
    assert _recommended(arts, faster) == {"backend": "onnxruntime", "precision": "int8"}
    assert _recommended(arts[:1]) == {"backend": "torch", "precision": "fp32"}


def test_recommendation_takes_bf16_only_where_it_measured_faster():
    """The bf16 stage's torch-under-autocast latency is set against what would be served otherwise (the ONNX
    stage's, or torch fp32's); a failed parity gate or a TensorRT engine keeps the other choice."""
    from optimize.recipes import _recommended
    from pancreas.bundle import Artifact

    arts = [Artifact(kind="torch", path="models/fold_all.pt"), Artifact(kind="onnx", path="models/model.onnx")]
    onnx = {"recipe": "onnx", "latency_ms_per_patch": {"before": 82.0, "after": 105.0, "speedup": 0.78}}

    def bf16(after: float, passed: bool = True) -> dict:
        return {"recipe": "bf16", "parity": {"passed": passed},
                "latency_ms_per_patch": {"before": 82.0, "after": after, "speedup": 82.0 / after}}

    assert _recommended(arts, [onnx, bf16(40.0)]) == {"backend": "torch", "precision": "bf16"}
    assert _recommended(arts, [onnx, bf16(120.0)]) == {"backend": "onnxruntime", "precision": "fp32"}
    assert _recommended(arts, [onnx, bf16(40.0, passed=False)]) == {"backend": "onnxruntime", "precision": "fp32"}
    assert _recommended(arts[:1], [bf16(40.0)]) == {"backend": "torch", "precision": "bf16"}
    assert _recommended(arts[:1], [bf16(90.0)]) == {"backend": "torch", "precision": "fp32"}
    engine = Artifact(kind="tensorrt", path="models/model_fp16.plan", precision="fp16")
    assert _recommended([*arts, engine], [onnx, bf16(40.0)]) == {"backend": "tensorrt", "precision": "fp16"}


def test_bf16_stage_gates_and_records_the_torch_weights_under_autocast(bundle, phantoms, tmp_path):
    """A real bf16 stage on CPU: parity against torch fp32 at the bf16 tolerance, a record naming the torch
    weights it casts (no new artifact), and a bundle the engine serves at the precision it recommends."""
    from pancreas.bundle import Bundle
    from pancreas.engine import Engine, EngineConfig

    out = optimize_bundle(bundle, "bf16", tmp_path / "bf16", options=_options(phantoms))
    record = out.metadata.optimization[-1]
    assert RECORD_KEYS <= set(record) and record["recipe"] == "bf16" and record["precision"] == "bf16"
    assert record["parity"]["passed"] and record["parity"]["tolerance"]["min_agreement"] == 0.98
    assert record["artifact"] == out.artifacts("torch")[0].path and not out.artifacts("torch", "bf16")
    rec = out.metadata.inference["recommended"]
    faster = record["latency_ms_per_patch"]["after"] < record["latency_ms_per_patch"]["before"]
    assert rec == ({"backend": "torch", "precision": "bf16"} if faster else {"backend": "torch", "precision": "fp32"})
    engine = Engine.from_bundle(Bundle.load(out.root), EngineConfig(device="cpu"))
    assert engine.backend.name == "torch"


@pytest.mark.slow
def test_every_fold_is_optimized_and_served_as_an_onnx_ensemble(phantoms, tmp_path):
    """--fold all: one parity-gated ONNX model per fold; onnxruntime serves all folds and matches torch."""
    import numpy as np

    from optimize.recipes import optimize_folds
    from pancreas.engine import Engine, EngineConfig
    from pancreas.nifti import read_volume
    from pancreas.testing import make_random_bundle, tiny_plans

    from .conftest import FEATURES, PATCH

    source = make_random_bundle(tmp_path / "src", seed=4, folds=2, plans=tiny_plans(patch_size=PATCH,
                                                                                     features=FEATURES))
    source.metadata.training_data["sources"] = {"phantom": 2}
    source = source.write(source.root, source.metadata, source.plans, source.dataset)
    out = optimize_folds(source, "onnx", tmp_path / "opt", options=_options(phantoms))
    onnx = out.artifacts("onnx", "fp32")
    assert sorted(a.fold for a in onnx) == [0, 1] and len({a.path for a in onnx}) == 2
    assert sorted(a.fold for a in out.artifacts("torch")) == [0, 1]
    assert sorted(r["fold"] for r in out.metadata.optimization) == [0, 1]
    assert out.metadata.training_data == {"sources": {"phantom": 2}}
    assert not list((tmp_path / "opt").glob(".fold_*"))
    volume = read_volume(next((phantoms / "validation").rglob("*_0000.nii.gz")))
    ort = Engine.from_bundle(out.root, EngineConfig(backend="onnxruntime", device="cpu"))
    ref = Engine.from_bundle(out.root, EngineConfig(backend="torch", device="cpu"))
    assert ort.info["folds"] == 2
    a, b = ort.predict(volume), ref.predict(volume)
    assert np.mean(a.mask == b.mask) > 0.999
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-3)
