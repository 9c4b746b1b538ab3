"""``--preview``: a PNG montage of phantom slices with the pancreas and lesion outlined."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pancreas.nifti import Volume, canonicalize, read_image

logger = logging.getLogger(__name__)

WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (W 400, L 40)


def read_canonical(path: Path) -> Volume:
    """``read_volume`` that keeps the SimpleITK image alive until the canonical array is copied.

    Works around pancreas.nifti.canonicalize returning a *view* into the image buffer when the file is
    float32 with an identity-like orientation (the buffer is freed when read_volume returns).
    """
    image = read_image(path)
    vol = canonicalize(image, name=Path(path).name)
    vol.array = np.array(vol.array, dtype=np.float32, copy=True)
    return vol


def _pick(cases: list[dict]) -> list[dict]:
    """One case per subtype (the first one of each), at most three."""
    chosen: dict[int, dict] = {}
    for case in cases:
        chosen.setdefault(int(case["subtype"]), case)
    return [chosen[k] for k in sorted(chosen)]


def _panels(image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> list[tuple]:
    """(title, image slice, mask slice, aspect) for: axial through the lesion, axial 15 mm above, coronal."""
    lesion = np.argwhere(mask == 2)
    center = lesion.mean(0).round().astype(int) if len(lesion) else np.array(mask.shape) // 2
    z, y = int(center[0]), int(center[1])
    z2 = int(np.clip(z + round(15 / spacing[0]), 0, mask.shape[0] - 1))
    # canonical arrays run superior-ward in z: flip the coronal view so the head is at the top
    return [("axial (lesion)", image[z], mask[z], 1.0),
            ("axial +15 mm", image[z2], mask[z2], 1.0),
            ("coronal", image[::-1, y, :], mask[::-1, y, :], spacing[0] / spacing[2])]


def write_preview(out: Path, cases: list[dict], path: Path) -> Path:
    """Render one row per subtype (axial slices and a coronal one) with mask outlines; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _pick(cases)
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.6 * len(rows)), squeeze=False)
    for row, case in zip(axes, rows):
        vol = read_canonical(Path(out) / case["image"])
        mask = read_canonical(Path(out) / case["mask"]).array.round().astype(np.uint8)
        for ax, (title, img, msk, aspect) in zip(row, _panels(vol.array, mask, vol.spacing)):
            ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
            if (msk >= 1).any():
                ax.contour(msk >= 1, levels=[0.5], colors="lime", linewidths=0.7)
            if (msk == 2).any():
                ax.contour(msk == 2, levels=[0.5], colors="red", linewidths=0.7)
            ax.set_title(f"{case['case_id']} subtype {case['subtype']} {case['header']}/{case['storage']}\n"
                         f"{title}, lesion {case['lesion_diameter_mm']:.0f} mm", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    logger.info("preview written to %s", path)
    return path
