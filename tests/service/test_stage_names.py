"""Stage names are defined once (pancreas.engine_config.ENGINE_STAGES); the service's lists follow it."""

from __future__ import annotations

from pancreas.engine_config import ENGINE_STAGES
from service.prometheus import STAGES
from service.schemas import Timings


def test_response_timings_and_metrics_list_the_same_stages_in_order():
    assert tuple(Timings.model_fields) == STAGES
    assert STAGES[2:-2] == ENGINE_STAGES


def test_engine_reports_only_known_stages(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from pancreas.engine import Engine, EngineConfig
    from pancreas.nifti import canonicalize
    from pancreas.testing import make_random_bundle, tiny_plans

    make_random_bundle(tmp_path / "b", seed=0, plans=tiny_plans(spacing=(4.0, 4.0, 4.0)))
    engine = Engine.from_bundle(tmp_path / "b", EngineConfig(backend="torch", device="cpu", coarse_to_fine=True,
                                                               num_threads=1))
    image = sitk.GetImageFromArray(np.full((40, 64, 64), -100, np.int16))
    image.SetSpacing((2.0, 2.0, 2.0))
    stages = set(engine.predict(canonicalize(image)).timings_ms) - {"total"}
    assert stages <= set(ENGINE_STAGES), stages - set(ENGINE_STAGES)
    assert {"preprocess", "inference", "postprocess"} <= stages
