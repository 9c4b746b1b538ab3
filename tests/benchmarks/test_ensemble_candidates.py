"""An ensemble bundle is benchmarked through the engine; nnU-Net's predictor cannot run it."""

from __future__ import annotations

from benchmarks.candidates import EngineRunner, Environment, discover
from pancreas.bundle import write_ensemble
from pancreas.testing import make_random_bundle, tiny_plans, write_case


def test_ensemble_bundle_gets_engine_candidates_only(tmp_path) -> None:
    plans = tiny_plans(patch_size=(16, 32, 32), spacing=(4.0, 4.0, 4.0), features=(4, 8, 16))
    members = {name: make_random_bundle(tmp_path / name, seed=seed, plans=plans) for name, seed in (("a", 0), ("b", 1))}
    ensemble = write_ensemble(tmp_path / "ens", members, name="ens")
    found = discover([ensemble.root], env=Environment(cuda=False, tensorrt=False, ort_cuda=False))
    assert [c.name for c in found] == ["torch-fp32", "torch-fp32-c2f"] and {c.runner for c in found} == {"engine"}
    runner = EngineRunner(ensemble, {**found[0].options, "num_threads": 1})
    assert set(runner.info["members"]) == {"a", "b"}
    image = write_case(tmp_path / "ct.nii.gz", (20, 36, 40), (2.0, 2.0, 3.0))
    stages = runner.predict_file(str(image), str(tmp_path / "mask.nii.gz"))
    assert stages["inference"] > 0 and (tmp_path / "mask.nii.gz").is_file()
