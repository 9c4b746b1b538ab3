"""Image formation: parenchymal texture, partial-volume blur and CT noise (white + in-plane correlated)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class NoiseRanges:
    """Uniform ranges of the :class:`NoiseModel` fields (drawn in this order)."""

    white: tuple[float, float] = (5.0, 9.0)
    correlated: tuple[float, float] = (5.0, 9.0)
    correlation_mm: tuple[float, float] = (0.6, 1.2)
    blur_mm: tuple[float, float] = (0.4, 0.7)
    slice_blur: tuple[float, float] = (0.3, 0.45)


@dataclass(frozen=True)
class NoiseModel:
    """Per-case noise: white and correlated standard deviations (HU) and blur widths (mm)."""

    white: float
    correlated: float
    correlation_mm: float  # in-plane Gaussian sigma of the correlated part
    blur_mm: float  # in-plane partial-volume (point-spread) sigma
    slice_blur: float  # z partial-volume sigma as a fraction of the slice spacing

    @classmethod
    def draw(cls, rng: np.random.Generator, ranges: NoiseRanges = NoiseRanges()) -> NoiseModel:
        return cls(white=float(rng.uniform(*ranges.white)), correlated=float(rng.uniform(*ranges.correlated)),
                   correlation_mm=float(rng.uniform(*ranges.correlation_mm)),
                   blur_mm=float(rng.uniform(*ranges.blur_mm)), slice_blur=float(rng.uniform(*ranges.slice_blur)))

    @property
    def sigma(self) -> float:
        """Total noise standard deviation (HU)."""
        return float(np.hypot(self.white, self.correlated))


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                 sigma_mm: float, *, inplane_only: bool = False) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32)."""
    field = rng.standard_normal(shape, dtype=np.float32)
    sigma = [sigma_mm / s for s in spacing]
    if inplane_only:
        sigma[0] = 0.0
    ndimage.gaussian_filter(field, sigma, output=field, truncate=2.5, mode="wrap")
    sample = field[::3, ::3, ::3]
    std = float(sample.std()) if sample.size > 8 else float(field.std())
    field /= max(std, 1e-6)
    return field


def texture(rng: np.random.Generator, tissue: np.ndarray, amplitude: np.ndarray,
            spacing: tuple[float, float, float]) -> np.ndarray:
    """Smooth mottling, scaled per tissue (``amplitude`` is a lookup table indexed by tissue id)."""
    return smooth_field(rng, tissue.shape, spacing, 2.0) * amplitude[tissue]


def form_image(hu: np.ndarray, spacing: tuple[float, float, float], model: NoiseModel,
               rng: np.random.Generator) -> np.ndarray:
    """Blur (scanner point-spread + slice profile), then add white and correlated noise (in place)."""
    sigma = (model.slice_blur, model.blur_mm / spacing[1], model.blur_mm / spacing[2])
    ndimage.gaussian_filter(hu, sigma, output=hu, truncate=2.5)
    hu += model.correlated * smooth_field(rng, hu.shape, spacing, model.correlation_mm, inplane_only=True)
    hu += model.white * rng.standard_normal(hu.shape, dtype=np.float32)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu
