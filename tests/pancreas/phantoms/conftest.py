"""Fixtures: a small phantom dataset written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pancreas.phantoms import SynthConfig, synthesize
from pancreas.testing import QUIZ_REAL


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 cases per subtype in train and test (12 crops), varied headers, with a preview."""
    out = tmp_path_factory.mktemp("phantoms")
    return synthesize(out, SynthConfig(cases_per_subtype=2, splits=("train", "test"), seed=11, preview=True))




@pytest.fixture(scope="session")
def quiz_real() -> Path:
    """The real quiz data (../shared/data/quiz-real next to the repo; skips with a reason where absent)."""
    if not (QUIZ_REAL / "masks").is_dir():
        pytest.skip(f"real quiz data not found at {QUIZ_REAL} (it lives in the workspace's shared/ folder and is "
                    "never committed)")
    return QUIZ_REAL
