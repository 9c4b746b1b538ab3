"""pancreas-mtl: multi-task nnU-Net v2 for pancreas CT (segmentation + lesion subtype)."""

from __future__ import annotations

__version__ = "0.1.0"

LABELS: dict[str, int] = {"background": 0, "pancreas": 1, "lesion": 2}
SUBTYPES: tuple[int, ...] = (0, 1, 2)
