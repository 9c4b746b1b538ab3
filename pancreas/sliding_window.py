"""Sliding-window inference with Gaussian blending, batching, mirroring TTA and subtype aggregation.

This mirrors nnU-Net v2's ``nnUNetPredictor.predict_sliding_window_return_logits``:

* the (normalized) image is padded with zeros, centred, up to at least the patch size;
* tiles start at nnU-Net's positions (:func:`compute_steps`: ``ceil((size - patch) / (patch * step)) + 1``
  tiles per axis, evenly spread, first at 0, last flush with the end);
* every tile's segmentation logits are multiplied by a Gaussian importance map (sigma = patch / 8,
  maximum 10, zeros replaced by the smallest nonzero value) and accumulated; the sum is divided by the
  summed weights;
* with ``tta`` the tile is also run mirrored along every non-empty subset of ``mirror_axes`` (7 extra
  passes for 3 axes) and the logits are averaged, exactly like nnU-Net; class logits are averaged over
  the same passes.

A 2D network runs on the slice patch ``(1, h, w)`` (:mod:`pancreas.patch`): a unit patch axis is tiled at
every index (nnU-Net predicts every slice), the Gaussian is nnU-Net's 2D one over ``(h, w)``, mirroring
skips the unit axis (nnU-Net mirrors a 2D network in-plane only) and batches hold
:func:`pancreas.patch.tiles_per_batch` slices.

Unlike nnU-Net, tiles run in batches of ``batch_size`` (``backend.max_batch`` at most), and the
backend also returns class logits per tile. The case's subtype probabilities are the tiles' class
softmax averaged with weights equal to each tile's predicted foreground mass (sum over voxels of the
softmax probability of pancreas + lesion), so tiles that see the pancreas decide the subtype; if no
tile sees any foreground, the plain mean is used.

The backend is any callable following :class:`pancreas.backends.Backend`: numpy float32
``[B, 1, *patch]`` in, ``(seg logits [B, C, *patch], class logits [B, K])`` out. A backend that sets
``accepts_tensors = True`` receives (and returns) torch tensors on the image's device instead, which
avoids host round trips on the GPU.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from pancreas.errors import JobCancelled
from pancreas.patch import tiles_per_batch

logger = logging.getLogger(__name__)

FOREGROUND_CHANNELS = (1, 2)  # pancreas, lesion: their softmax mass weights the class aggregation


@dataclass(frozen=True)
class WindowConfig:
    """Sliding-window options (see the module docstring)."""

    patch_size: tuple[int, int, int]  # a 2D network's: (1, h, w)
    step_size: float = 0.5
    batch_size: int = 2  # EngineConfig.batch_size: patches per call, x SLICE_BATCH_FACTOR for slices
    tta: bool = False
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    sigma_scale: float = 1.0 / 8
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size {self.step_size} must be in (0, 1]")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size} must be >= 1")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size {self.patch_size} must be three positive integers")


@dataclass
class WindowResult:
    """Blended logits over the (unpadded) image and the aggregated subtype probabilities."""

    logits: torch.Tensor  # [C, D, H, W] float32, on the image's device
    class_probabilities: np.ndarray  # [K] float64, sums to 1
    foreground_mass: float  # total weight behind class_probabilities (0: plain mean was used)
    n_tiles: int


@lru_cache(maxsize=8)
def _gaussian_np(patch_size: tuple[int, ...], sigma_scale: float, value_scaling: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if 1 in patch_size and len(patch_size) > 1:  # a slice patch: nnU-Net's Gaussian over the other axes
        inner = _gaussian_np(tuple(p for p in patch_size if p != 1) or (1,), sigma_scale, value_scaling)
        return inner.reshape(patch_size)
    tmp = np.zeros(patch_size)
    tmp[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g /= g.max() / value_scaling
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling: float = 10.0,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """nnU-Net's ``compute_gaussian``: a float32 map peaking at ``value_scaling``, strictly positive."""
    return torch.from_numpy(_gaussian_np(tuple(int(p) for p in patch_size), sigma_scale, value_scaling)).to(device)


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """nnU-Net's ``compute_steps_for_sliding_window`` (the image must be at least the patch size); a unit
    patch axis (a 2D network's slice axis) starts a tile at every index, as nnU-Net's 2D prediction does."""
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}; pad it")
        if patch == 1:
            steps.append(list(range(int(size))))
            continue
        n = int(np.ceil((size - patch) / (patch * step_size))) + 1
        stride = (size - patch) / (n - 1) if n > 1 else 0
        steps.append([int(np.round(stride * i)) for i in range(n)])
    return steps


def pad_to(x: torch.Tensor, min_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last three axes up to ``min_shape``, content centred (extra voxel above), like nnU-Net.

    Returns the padded tensor and the slices (over the last three axes) that undo the padding.
    """
    pads, slices = [], []
    for size, target in zip(x.shape[-3:], min_shape):
        total = max(int(target) - size, 0)
        lo = total // 2
        pads.append((lo, total - lo))
        slices.append(slice(lo, lo + size))
    if any(p for pair in pads for p in pair):
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        x = torch.nn.functional.pad(x, flat, mode="constant", value=0.0)
    return x, tuple(slices)


def tile_slices(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[tuple[slice, ...]]:
    steps = compute_steps(image_size, patch_size, step_size)
    return [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in itertools.product(*steps)]


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The identity plus every non-empty subset of ``axes`` (nnU-Net's TTA set), as spatial axes."""
    return [()] + [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


def _batches(tiles: list[tuple[slice, ...]], size: int) -> Iterator[list[tuple[slice, ...]]]:
    for i in range(0, len(tiles), size):
        yield tiles[i:i + size]


def _run(backend: Any, batch: torch.Tensor, native: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if native:
        seg, cls = backend(batch)
        return seg.float(), cls.float()
    seg, cls = backend(np.ascontiguousarray(batch.cpu().numpy(), dtype=np.float32))
    return (torch.from_numpy(np.asarray(seg, dtype=np.float32)).to(batch.device),
            torch.from_numpy(np.asarray(cls, dtype=np.float32)).to(batch.device))


def predict_tiles(backend: Any, batch: torch.Tensor, config: WindowConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one batch ``[B, 1, *patch]``, with mirroring TTA if configured; returns averaged logits."""
    native = bool(getattr(backend, "accepts_tensors", False))
    axes = [a + 2 for a in config.mirror_axes if config.patch_size[a] > 1]  # flipping a unit axis is a no-op
    combos = mirror_combinations(axes) if config.tta else [()]
    seg_sum = cls_sum = None
    for axes in combos:
        x = torch.flip(batch, axes) if axes else batch
        seg, cls = _run(backend, x, native)
        if axes:
            seg = torch.flip(seg, axes)
        seg_sum = seg if seg_sum is None else seg_sum.add_(seg)
        cls_sum = cls if cls_sum is None else cls_sum.add_(cls)
    if len(combos) > 1:
        seg_sum.div_(len(combos))
        cls_sum.div_(len(combos))
    return seg_sum, cls_sum


@torch.inference_mode()
def sliding_window(image: torch.Tensor, backend: Any, config: WindowConfig, *,
                   cancel: threading.Event | None = None) -> WindowResult:
    """Predict a preprocessed image ``[1, D, H, W]`` tile by tile. See the module docstring.

    Raises :class:`~pancreas.errors.JobCancelled` before the next batch once ``cancel`` is set.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [C, D, H, W], got shape {tuple(image.shape)}")
    device = image.device
    padded, unpad = pad_to(image, config.patch_size)
    tiles = tile_slices(padded.shape[1:], config.patch_size, config.step_size)
    batch_size = window_batch(config.batch_size, config.patch_size, backend)
    gauss = gaussian_importance(config.patch_size, config.sigma_scale, device=device)
    logits: torch.Tensor | None = None
    weights = torch.zeros(padded.shape[1:], dtype=torch.float32, device=device)
    cls_probs, fg_mass = [], []
    progress = _progress(len(tiles), config.progress)
    for done, group in enumerate(_batches(tiles, batch_size)):
        if cancel is not None and cancel.is_set():
            progress.close()
            raise JobCancelled(f"cancelled after {done * batch_size} of {len(tiles)} tiles")
        batch = torch.stack([padded[(slice(None), *sl)] for sl in group])
        seg, cls = predict_tiles(backend, batch, config)
        if logits is None:
            logits = torch.zeros((seg.shape[1], *padded.shape[1:]), dtype=torch.float32, device=device)
        fg_mass.append(_foreground_mass(seg))
        cls_probs.append(torch.softmax(cls.double(), dim=1))
        for i, sl in enumerate(group):
            logits[(slice(None), *sl)].addcmul_(seg[i], gauss)
            weights[sl] += gauss
        progress.update(len(group))
    progress.close()
    logits.div_(weights)
    probs_k, mass = torch.cat(cls_probs).cpu(), torch.cat(fg_mass).cpu()  # one sync, at the end
    total = float(mass.sum())
    agg = (probs_k * mass[:, None]).sum(0) / total if total > 1e-6 else probs_k.mean(0)
    agg = (agg / agg.sum()).numpy()
    return WindowResult(logits=logits[(slice(None), *unpad)].contiguous(), class_probabilities=agg,
                        foreground_mass=total if total > 1e-6 else 0.0, n_tiles=len(tiles))


def window_batch(batch_size: int, patch_size: Sequence[int], backend: Any) -> int:
    """Patches per backend call: :func:`pancreas.patch.tiles_per_batch`, at most ``backend.max_batch``."""
    wanted = tiles_per_batch(batch_size, patch_size)
    return max(1, min(wanted, int(getattr(backend, "max_batch", wanted))))


def _foreground_mass(seg: torch.Tensor) -> torch.Tensor:
    """Per tile: summed softmax probability of the foreground channels, on every 2nd voxel per (non-unit) axis
    (a weight, not a measurement: subsampling makes it 8x cheaper and changes nothing that matters)."""
    steps = [2 if n > 1 else 1 for n in seg.shape[2:]]
    sub = seg[(slice(None), slice(None), *(slice(None, None, k) for k in steps))]
    probs = torch.softmax(sub, dim=1)
    fg = [c for c in FOREGROUND_CHANNELS if c < probs.shape[1]]
    return probs[:, fg].sum(dim=tuple(range(1, probs.ndim))).double() * float(np.prod(steps))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="tiles", unit="tile", disable=not enabled, leave=False)
