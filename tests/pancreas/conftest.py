"""Fixtures for the core tests: a fast random bundle, bundle copies with a recorded input domain."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pancreas.bundle import Bundle
from pancreas.domain import InputDomain, record_domain
from pancreas.testing import make_random_bundle, tiny_plans


@pytest.fixture
def few_threads() -> None:
    """For tests running an engine in-process: the dev machines are oversubscribed, one thread is fastest."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Random-init tiny bundle at 4 mm: a whole-abdomen field of view is a handful of patches on a CPU."""
    plans = tiny_plans(spacing=(4.0, 4.0, 4.0))
    return make_random_bundle(tmp_path_factory.mktemp("tiny") / "b", plans=plans)


@pytest.fixture
def with_domain(tmp_path: Path) -> Callable[..., Bundle]:
    """``with_domain(bundle, domain_json)``: a copy of ``bundle`` whose metadata records that domain."""

    def make(bundle: Bundle, domain: dict) -> Bundle:
        root = Path(tempfile.mkdtemp(prefix="bundle-", dir=tmp_path)) / bundle.root.name
        shutil.copytree(bundle.root, root)
        return record_domain(root, InputDomain.model_validate(domain))

    return make
