"""The scalar distributions profiles are built from, and the gland fit of the quiz profile."""

from __future__ import annotations

import numpy as np
import pytest

from pancreas.phantoms.anatomy import draw_pancreas
from pancreas.phantoms.distributions import Mixture, Percentiles, Uniform
from pancreas.phantoms.lesions import CLASSIC_DIAMETER, EquivalentDiameter, draw_lesion
from pancreas.phantoms.sizing import SCALE_LIMITS, fit_parenchyma, gland_volumes


def _hand_written(rng: np.random.Generator) -> float:
    """The classic lesion diameter as it was written before profiles existed."""
    u = rng.random()
    if u < 0.1:
        return float(rng.uniform(5, 10))
    if u < 0.2:
        return float(rng.uniform(30, 35))
    return float(rng.uniform(10, 30))


def test_mixture_draws_like_the_hand_written_sampler() -> None:
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [CLASSIC_DIAMETER.sample(a) for _ in range(500)] == [_hand_written(b) for _ in range(500)]
    assert a.random() == b.random(), "both consumed the same number of draws"
    assert CLASSIC_DIAMETER.range == (5.0, 35.0)


def test_uniform_is_one_draw() -> None:
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert Uniform(0.6, 0.9).sample(a) == float(b.uniform(0.6, 0.9))


def test_percentiles_sample_the_quantile_function() -> None:
    table = Percentiles((0, 50, 100), (1.0, 2.0, 10.0), "test")
    rng = np.random.default_rng(0)
    draws = np.array([table.sample(rng) for _ in range(4000)])
    assert draws.min() >= 1.0 and draws.max() <= 10.0
    assert abs(np.median(draws) - 2.0) < 0.1 and abs(np.mean(draws < 2.0) - 0.5) < 0.03
    central = table.between(25, 75)
    assert central.sampled == (1.5, 6.0) and central.range == (1.0, 10.0)
    draws = np.array([central.sample(rng) for _ in range(1000)])
    assert draws.min() >= 1.5 and draws.max() <= 6.0


@pytest.mark.parametrize("kwargs", [{"levels": (0, 100), "values": (2.0, 1.0)},
                                    {"levels": (0, 50, 100), "values": (1.0, 2.0)},
                                    {"levels": (0, 100), "values": (1.0, 2.0), "lo": 50, "hi": 40}])
def test_bad_percentile_tables_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Percentiles(source="test", **kwargs)


def test_bad_mixture_is_rejected() -> None:
    with pytest.raises(ValueError, match="increase to 1.0"):
        Mixture(((0.5, 0.0, 1.0), (0.9, 1.0, 2.0)))


def test_equivalent_diameter() -> None:
    d = EquivalentDiameter(Uniform(4.18879, 4.18879)).sample(np.random.default_rng(0))  # 4/3 pi 10^3 mm3
    assert d == pytest.approx(20.0, rel=1e-4)


@pytest.mark.parametrize("target", [35.0, 60.0, 95.0])
def test_fit_parenchyma_reaches_the_target(target: float) -> None:
    rng = np.random.default_rng(4)
    pancreas = draw_pancreas(rng)
    lesion = draw_lesion(rng, 0, pancreas, 100.0)
    fitted = fit_parenchyma(pancreas, lesion, target)
    parenchyma, lesion_ml = gland_volumes(fitted, lesion)
    scale = fitted.radii[0] / pancreas.radii[0]
    assert SCALE_LIMITS[0] <= scale <= SCALE_LIMITS[1]
    assert parenchyma == pytest.approx(target, rel=0.08)
    assert lesion_ml == pytest.approx(np.pi / 6 * lesion.diameter_mm ** 3 / 1000, rel=0.15)
    with pytest.raises(ValueError, match="must be > 0"):
        fit_parenchyma(pancreas, lesion, 0.0)
