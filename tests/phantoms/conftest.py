"""Fixtures: a small phantom dataset written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pancreas.phantoms import SynthConfig, synthesize


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 cases per subtype in train and test (12 crops), varied headers, with a preview."""
    out = tmp_path_factory.mktemp("phantoms")
    return synthesize(out, SynthConfig(cases_per_subtype=2, splits=("train", "test"), seed=11, preview=True))
