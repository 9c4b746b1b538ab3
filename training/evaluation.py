"""Held-out evaluation during training: sliding window over preprocessed cases, DSC and macro-F1.

Cases are read from nnU-Net's preprocessed folder (image and labels on the plans' target grid) and
predicted with :func:`pancreas.sliding_window.sliding_window` (the engine's own tiling, Gaussian blending
and foreground-mass-weighted subtype aggregation), so fold metrics are measured on the network's grid.
For phantoms planned at their native spacing this equals the original grid; the demo bundle's
recorded metrics are measured through the full inference engine instead (``training.export``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pancreas import LABELS
from pancreas.metrics import dice, macro_f1
from pancreas.network import MultiTaskUNet
from pancreas.sliding_window import WindowConfig, sliding_window
from pancreas.sources import UNKNOWN

logger = logging.getLogger(__name__)


class NetworkBackend:
    """Minimal torch backend (engine protocol) around an in-memory network, on tensors."""

    name = "torch"
    precision = "fp32"
    accepts_tensors = True

    def __init__(self, net: MultiTaskUNet, patch_size: Sequence[int], max_batch: int = 2) -> None:
        self.net = net
        self.patch_size = tuple(int(p) for p in patch_size)
        self.max_batch = max_batch

    @torch.inference_mode()
    def __call__(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = self.net(patches)
        return (seg[0] if isinstance(seg, (list, tuple)) else seg), cls


def evaluate_preprocessed(net: MultiTaskUNet, plans: dict[str, Any], configuration: str, folder: str,
                          keys: Sequence[str], subtypes: dict[str, int], *, device: torch.device,
                          step_size: float = 0.5, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Per-case and mean metrics of ``net`` on preprocessed cases ``keys`` of ``folder``.

    ``subtypes`` holds the cases whose subtype is scored; ``sources`` (case -> real/phantom) adds a
    ``by_source`` summary, so real and phantom scores are never mixed up.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    patch = plans["configurations"][configuration]["patch_size"]
    was_training = net.training
    net.eval()
    backend = NetworkBackend(net, patch)
    dataset = infer_dataset_class(folder)(folder, list(keys))
    cases = []
    try:
        for key in keys:
            data, seg, _, _ = dataset.load_case(key)
            image = torch.from_numpy(np.asarray(data, dtype=np.float32)).to(device)
            result = sliding_window(image, backend, WindowConfig(patch_size=tuple(patch), step_size=step_size))
            pred = result.logits.argmax(0).cpu().numpy()
            cases.append(case_metrics(key, pred, np.asarray(seg)[0], int(np.argmax(result.class_probabilities)),
                                      subtypes.get(key)))
            cases[-1]["source"] = (sources or {}).get(key, UNKNOWN)
    finally:
        net.train(was_training)
    by_source = {src: summarize([c for c in cases if c["source"] == src]) for src in sorted({c["source"] for c in cases})}
    return {"cases": cases, "summary": summarize(cases), "by_source": by_source}


def case_metrics(key: str, pred: np.ndarray, ref: np.ndarray, subtype_pred: int,
                 subtype_true: int | None) -> dict[str, Any]:
    return {"case": key,
            "dice_whole": dice(pred > 0, ref > 0),
            "dice_lesion": dice(pred == LABELS["lesion"], ref == LABELS["lesion"]),
            "subtype_pred": subtype_pred, "subtype_true": subtype_true}


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    labelled = [c for c in cases if c["subtype_true"] is not None]
    return {"n_cases": len(cases),
            "dice_whole": float(np.mean([c["dice_whole"] for c in cases])) if cases else float("nan"),
            "dice_lesion": float(np.mean([c["dice_lesion"] for c in cases])) if cases else float("nan"),
            "macro_f1": float(macro_f1([c["subtype_true"] for c in labelled], [c["subtype_pred"] for c in labelled]))
            if labelled else float("nan"),
            "accuracy": float(np.mean([c["subtype_true"] == c["subtype_pred"] for c in labelled]))
            if labelled else float("nan")}
