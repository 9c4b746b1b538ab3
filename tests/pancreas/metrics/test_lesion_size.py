"""Lesion DSC by true lesion volume: bins, found rates and the size re-weighting, hand-computed."""

from __future__ import annotations

import math

import pytest

from pancreas.lesion_size import (
    bin_index,
    check_edges,
    size_adjusted,
    size_strata,
    strata_dicts,
    strata_markdown,
)


def row(volume: float | None, dsc: float | None) -> dict:
    return {"lesion_ml_ref": volume, "lesion_dsc": dsc}


ROWS = [row(0.5, 0.0), row(2.0, 0.05), row(2.5, 0.45), row(12.0, 0.8), row(40.0, 0.6),
        row(None, 0.9), row(0.0, 1.0), row(5.0, math.nan)]  # the last three are left out


def test_strata_hand_computed() -> None:
    strata = size_strata(ROWS, edges=(1, 3, 30))
    assert [b.label for b in strata] == ["< 1 mL", "1-3 mL", "3-30 mL", ">= 30 mL"]
    assert [b.n for b in strata] == [1, 2, 1, 1]
    assert strata[1].lesion_dsc == pytest.approx(0.25) and strata[1].found == pytest.approx(0.5)
    assert strata[1].median_ml == pytest.approx(2.25)
    assert strata[0].found == 0.0 and strata[3].found == 1.0
    assert bin_index(1.0, (1, 3)) == 1 and bin_index(0.99, (1, 3)) == 0 and bin_index(3.0, (1, 3)) == 2
    empty = size_strata([row(0.5, 0.2)], edges=(1,))
    assert empty[1].n == 0 and empty[1].lesion_dsc is None and empty[1].found is None
    assert strata_dicts(strata)[-1]["high_ml"] is None and strata_dicts(strata)[0]["label"] == "< 1 mL"


def test_size_adjusted_reweights_by_population_share() -> None:
    strata = size_strata(ROWS, edges=(1, 3, 30))
    # population: 2 lesions < 1 mL, 1 in 1-3 mL, 1 in 3-30 mL (and an empty mask, ignored)
    adjusted = size_adjusted(strata, [0.2, 0.7, 1.5, 20.0, 0.0])
    assert adjusted == pytest.approx((2 * 0.0 + 1 * 0.25 + 1 * 0.8) / 4)
    assert size_adjusted(size_strata([row(0.5, 0.3)], edges=(1,)), [5.0]) is None  # bin without a scored case
    assert size_adjusted(strata, []) is None


def test_markdown_names_the_population_and_the_adjusted_mean() -> None:
    strata = size_strata(ROWS, edges=(1, 3, 30))
    text = strata_markdown(strata, [0.2, 0.7, 1.5, 20.0], population="masks/ (subtype 2)")
    assert "| 1-3 mL | 2 | 2.2 | 0.250 | 50% | 25% |" in text
    assert "| all | 5 | | 0.380 | 60% | 100% |" in text
    assert "re-weighted to the lesion sizes of masks/ (subtype 2) (4 lesions): 0.263" in text
    assert "share in" not in strata_markdown(strata)


@pytest.mark.parametrize("edges", [(), (3, 1), (0, 1), (1, 1), (1, math.inf), (-1,)])
def test_bad_edges_are_refused(edges) -> None:
    with pytest.raises(ValueError, match="increasing"):
        check_edges(edges)
