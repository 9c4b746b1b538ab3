"""Sliding window: nnU-Net's steps and Gaussian, padding, blending, TTA symmetry, class aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

from pancreas.backends import create_backend
from pancreas.engine import EngineConfig
from pancreas.sliding_window import (
    WindowConfig,
    compute_steps,
    gaussian_importance,
    mirror_combinations,
    pad_to,
    sliding_window,
)


class EchoBackend:
    """Segmentation logits = (0, x, 2x): exact blending must give them back; class logits from the patch mean."""

    name, precision, device, max_batch = "echo", "fp32", "cpu", 3

    def __init__(self, patch: tuple[int, int, int]) -> None:
        self.patch_size = patch
        self.calls: list[int] = []

    def __call__(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert patches.dtype == np.float32 and patches.shape[1:] == (1, *self.patch_size)
        self.calls.append(patches.shape[0])
        seg = np.concatenate([np.zeros_like(patches), patches, 2 * patches], axis=1)
        m = patches.mean(axis=(1, 2, 3, 4))
        return seg, np.stack([m, -m, np.zeros_like(m)], axis=1).astype(np.float32)


@pytest.mark.parametrize("patch", [(16, 32, 32), (15, 20, 9), (8, 8, 8)])
def test_gaussian_matches_nnunet(patch) -> None:
    ref = compute_gaussian(patch, 1 / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
    ours = gaussian_importance(patch)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert float(ours.min()) > 0 and abs(float(ours.max()) - 10) < 1e-4


@pytest.mark.parametrize("size,patch,step", [((110, 64, 64), (64, 64, 64), 0.5), ((33, 47, 200), (16, 32, 32), 0.5),
                                              ((40, 40, 40), (16, 32, 32), 0.25), ((16, 32, 32), (16, 32, 32), 1.0),
                                              ((100, 77, 90), (16, 32, 32), 0.7)])
def test_steps_match_nnunet(size, patch, step) -> None:
    assert compute_steps(size, patch, step) == compute_steps_for_sliding_window(size, patch, step)


def test_mirror_combinations() -> None:
    assert mirror_combinations([2, 3, 4]) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]


@pytest.mark.parametrize("shape", [(20, 45, 50), (7, 20, 40), (16, 32, 32)])
@pytest.mark.parametrize("step,batch", [(0.5, 2), (0.3, 3)])
def test_blending_reproduces_echo_and_pads_small_volumes(shape, step, batch) -> None:
    image = torch.randn(1, *shape)
    backend = EchoBackend((16, 32, 32))
    res = sliding_window(image, backend, WindowConfig(patch_size=(16, 32, 32), step_size=step, batch_size=batch))
    assert res.logits.shape == (3, *shape)
    torch.testing.assert_close(res.logits[1], image[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.logits[2], 2 * image[0], rtol=1e-4, atol=1e-5)
    assert max(backend.calls) <= min(batch, backend.max_batch) and sum(backend.calls) == res.n_tiles
    assert np.isclose(res.class_probabilities.sum(), 1)


def test_pad_to_centres_content() -> None:
    x = torch.ones(1, 5, 10, 3)
    padded, unpad = pad_to(x, (8, 10, 6))
    assert padded.shape == (1, 8, 10, 6)
    assert float(padded.sum()) == float(x.sum())
    assert unpad == (slice(1, 6), slice(0, 10), slice(1, 4))  # extra voxel above, like nnU-Net
    torch.testing.assert_close(padded[(slice(None), *unpad)], x)


def test_class_probabilities_weighted_by_foreground() -> None:
    """Tiles with no predicted foreground must not influence the subtype."""

    class TwoRegions(EchoBackend):
        def __call__(self, patches):
            b = patches.shape[0]
            m = patches.mean(axis=(1, 2, 3, 4))
            fg = m > 0  # foreground tiles say class 2, background tiles say class 0
            seg = np.zeros((b, 3, *self.patch_size), np.float32)
            seg[:, 0] = np.where(fg, -20, 20)[:, None, None, None]
            cls = np.where(fg[:, None], [[-9, -9, 9]], [[9, -9, -9]]).astype(np.float32)
            return seg, cls

    image = -torch.ones(1, 16, 32, 96)
    image[..., 64:] = 1  # only the last tile column sees "foreground"
    res = sliding_window(image, TwoRegions((16, 32, 32)), WindowConfig(patch_size=(16, 32, 32), step_size=1.0))
    assert res.n_tiles == 3 and res.foreground_mass > 0
    assert res.class_probabilities.argmax() == 2 and res.class_probabilities[2] > 0.99


def test_real_network_single_tile_equals_direct_forward(bundle) -> None:
    backend = create_backend(bundle, EngineConfig(backend="torch", device="cpu"))
    patch = tuple(backend.patch_size)
    image = torch.randn(1, *patch)
    res = sliding_window(image, backend, WindowConfig(patch_size=patch))
    with torch.inference_mode():
        seg, cls = backend.network(image[None])
    torch.testing.assert_close(res.logits, seg[0], rtol=1e-4, atol=1e-4)  # blending a single tile is exact
    assert np.allclose(res.class_probabilities, torch.softmax(cls[0].double(), 0).numpy(), atol=1e-6)


def test_real_network_tta_is_mirror_symmetric(bundle) -> None:
    """With mirroring TTA over all axes the prediction of a flipped image is the flipped prediction."""
    backend = create_backend(bundle, EngineConfig(backend="torch", device="cpu"))
    patch = tuple(backend.patch_size)
    image = torch.randn(1, *patch)
    cfg = WindowConfig(patch_size=patch, tta=True, batch_size=2)
    a = sliding_window(image, backend, cfg)
    for axis in (1, 3):
        b = sliding_window(torch.flip(image, (axis,)), backend, cfg)
        torch.testing.assert_close(torch.flip(b.logits, (axis,)), a.logits, rtol=1e-3, atol=1e-4)
        assert np.allclose(a.class_probabilities, b.class_probabilities, atol=1e-5)
    plain = sliding_window(image, backend, WindowConfig(patch_size=patch))
    assert not torch.allclose(plain.logits, a.logits, atol=1e-4)  # TTA really changed something


def test_real_network_multi_tile_batched_equals_unbatched(bundle) -> None:
    backend = create_backend(bundle, EngineConfig(backend="torch", device="cpu"))
    image = torch.randn(1, 20, 36, 40)
    one = sliding_window(image, backend, WindowConfig(patch_size=backend.patch_size, batch_size=1))
    four = sliding_window(image, backend, WindowConfig(patch_size=backend.patch_size, batch_size=4))
    torch.testing.assert_close(one.logits, four.logits, rtol=1e-4, atol=1e-4)
    assert one.n_tiles == 8
