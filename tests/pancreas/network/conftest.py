"""Tiny nnU-Net plans (pancreas.testing.tiny_plans) for network unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from pancreas import testing


def make_plans(residual: bool = False) -> dict[str, Any]:
    return testing.tiny_plans(patch_size=(8, 16, 16), spacing=(2.0, 1.0, 1.0), features=(4, 8, 16, 16),
                      residual=residual, convs_per_stage=1)


@pytest.fixture(scope="session")
def tiny_plans() -> dict[str, Any]:
    return make_plans()


@pytest.fixture(scope="session")
def tiny_res_plans() -> dict[str, Any]:
    return make_plans(residual=True)
