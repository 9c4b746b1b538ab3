"""Mirroring TTA over a subset of axes: fewer passes, symmetric only along the flipped axes, set per bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pancreas.backends import create_backend
from pancreas.engine import Engine, EngineConfig
from pancreas.engine_config import axes_ok, mirror_axis_list
from pancreas.errors import PancreasError
from pancreas.prediction import tta_mirror_axes
from pancreas.sliding_window import WindowConfig, sliding_window
from pancreas.testing import with_inference

SPACING = (2.0, 1.5, 1.5)


def cpu(**options) -> EngineConfig:
    return EngineConfig(backend="torch", device="cpu", postprocess=False, **options)


def test_one_axis_is_symmetric_along_that_axis_only(bundle) -> None:
    backend = create_backend(bundle, cpu())
    patch = tuple(backend.patch_size)
    image = torch.randn(1, *patch, generator=torch.Generator().manual_seed(1))
    cfg = WindowConfig(patch_size=patch, tta=True, mirror_axes=(2,))
    a = sliding_window(image, backend, cfg)
    x = sliding_window(torch.flip(image, (3,)), backend, cfg)  # tensor axis 3 = network axis 2
    torch.testing.assert_close(torch.flip(x.logits, (3,)), a.logits, rtol=1e-3, atol=1e-4)
    z = sliding_window(torch.flip(image, (1,)), backend, cfg)
    assert not torch.allclose(torch.flip(z.logits, (1,)), a.logits, atol=1e-3)  # z is not averaged over


def test_engine_runs_two_passes_per_patch_instead_of_eight(bundle, make_ct, make_volume) -> None:
    vol = make_volume(make_ct((16, 32, 32), seed=2), SPACING)
    counts = {}
    for axes in ((0, 1, 2), (2,)):
        engine = Engine.from_bundle(bundle, cpu(tta=True, mirror_axes=axes))
        assert engine.info["mirror_axes"] == list(axes)
        calls: list[int] = []
        hook = engine.backend.network.register_forward_pre_hook(
            lambda m, args, seen=calls: seen.append(args[0].shape[0]))
        try:
            engine.predict(vol)
        finally:
            hook.remove()
        counts[axes] = sum(calls)
    assert counts[(0, 1, 2)] == 4 * counts[(2,)] > 0  # 8 flips against 2, patch for patch


def test_bundle_records_mirror_axes_and_config_overrides_them(bundle, make_ct, make_volume, tmp_path) -> None:
    vol = make_volume(make_ct((16, 32, 32), seed=3), SPACING)
    recorded = with_inference(bundle, tmp_path / "x_only", tta=True, mirror_axes=[2])
    follows = Engine.from_bundle(recorded, cpu())
    assert follows.window.mirror_axes == (2,) and follows.window.tta
    np.testing.assert_allclose(follows.predict_soft(vol).probabilities,
                               Engine.from_bundle(bundle, cpu(tta=True, mirror_axes=(2,))).predict_soft(vol).probabilities,
                               atol=1e-6)
    assert Engine.from_bundle(recorded, cpu(mirror_axes=(0, 1, 2))).window.mirror_axes == (0, 1, 2)
    assert Engine.from_bundle(bundle, cpu()).window.mirror_axes == (0, 1, 2)  # nothing recorded: every axis
    for bad in ([], [3], [1, 1], "x", [True], 2):
        broken = with_inference(bundle, tmp_path / f"bad{len(list(tmp_path.iterdir()))}", mirror_axes=bad)
        with pytest.raises(PancreasError, match="mirror_axes"):
            Engine.from_bundle(broken, cpu())


def test_mirror_axes_options_are_checked() -> None:
    assert mirror_axis_list("2") == (2,) and mirror_axis_list("0, 2") == (0, 2)
    for bad in ("", "3", "1,1", "a", "-1"):
        with pytest.raises(ValueError, match="mirror axes"):
            mirror_axis_list(bad)
    assert EngineConfig(mirror_axes=[1, 2]).mirror_axes == (1, 2)  # JSON lists become tuples
    with pytest.raises(PancreasError, match="mirror_axes"):
        EngineConfig(mirror_axes=(0, 3))
    assert not axes_ok(()) and not axes_ok((1.0,)) and axes_ok((0, 1, 2))
    assert tta_mirror_axes({}, EngineConfig()) == (0, 1, 2)
    assert tta_mirror_axes({"mirror_axes": [1, 2]}, EngineConfig()) == (1, 2)
