"""An ensemble bundle is not optimized as a whole: ``pancreas optimize`` says to optimize its members."""

from __future__ import annotations

import pytest

from optimize.recipes import optimize_bundle, optimize_folds
from optimize.state import RecipeError
from pancreas.bundle import write_ensemble
from pancreas.testing import make_random_bundle, tiny_plans


@pytest.mark.parametrize("optimize", [optimize_bundle, optimize_folds])
def test_optimize_refuses_an_ensemble_bundle(optimize, tmp_path) -> None:
    plans = tiny_plans(patch_size=(16, 32, 32), features=(4, 8, 16))
    members = {name: make_random_bundle(tmp_path / name, seed=seed, plans=plans)
               for name, seed in (("a", 0), ("b", 1))}
    ensemble = write_ensemble(tmp_path / "ens", members, name="ens")
    with pytest.raises(RecipeError, match=r"ensemble bundle \(members \['a', 'b'\]\); optimize each member"):
        optimize(ensemble.root, "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()
