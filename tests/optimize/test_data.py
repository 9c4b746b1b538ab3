"""Patch sampling (lesion-biased fine-tuning patches) and the benchmark's balanced held-out split."""

from __future__ import annotations

import numpy as np


def _volume() -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[5:35, 5:60, 5:60] = 1  # a big pancreas
    labels[30:33, 50:54, 50:54] = 2  # a small lesion in one corner
    return image, labels


def test_lesion_fraction_centres_patches_on_the_lesion():
    from optimize.data import sample_from_case

    image, labels = _volume()
    patch = (8, 16, 16)
    _, plain = sample_from_case(image, labels, patch, 12, np.random.default_rng(1), fg_fraction=1.0)
    _, biased = sample_from_case(image, labels, patch, 12, np.random.default_rng(1), fg_fraction=1.0,
                                 lesion_fraction=1.0)
    assert biased.shape == (12, *patch)
    assert all((p == 2).any() for p in biased)
    assert sum((p == 2).any() for p in plain) < 12


def test_held_out_cases_are_balanced_over_subtypes(phantoms):
    from benchmarks.optimize_bench import held_out_cases

    cases = held_out_cases(phantoms, per_subtype=1)
    assert sorted(c.subtype for c in cases) == [0, 1, 2]
    assert all("validation" in str(c.image) for c in cases)
