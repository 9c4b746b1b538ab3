"""pancreas-mtl: multi-task nnU-Net v2 for pancreas CT (segmentation + lesion subtype)."""

from __future__ import annotations

__version__ = "0.1.0"

LABELS: dict[str, int] = {"background": 0, "pancreas": 1, "lesion": 2}
SUBTYPES: tuple[int, ...] = (0, 1, 2)
#: labels other than background (a cascade stage gets one input channel per foreground label, as in nnU-Net)
FOREGROUND_LABELS: tuple[int, ...] = tuple(sorted(v for v in LABELS.values() if v > 0))
