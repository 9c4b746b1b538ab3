"""Held-out evaluation during training: sliding window over preprocessed cases, DSC and macro-F1.

Cases are read from nnU-Net's preprocessed folder (image and labels on the plans' target grid) and
predicted with :func:`pancreas.sliding_window.sliding_window` (the engine's own tiling, Gaussian blending
and foreground-mass-weighted subtype aggregation), so fold metrics are measured on the network's grid.
For phantoms planned at their native spacing this equals the original grid; the demo bundle's
recorded metrics are measured through the full inference engine instead (``training.export``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pancreas import LABELS
from pancreas.backends.slices import for_window
from pancreas.bundle import resolve_configuration
from pancreas.metrics import dice, macro_f1
from pancreas.network import MultiTaskUNet
from pancreas.patch import tiles_per_batch
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
                          step_size: float = 0.5, sources: dict[str, str] | None = None,
                          previous_stage: str | None = None, foreground_labels: Sequence[int] = (1, 2),
                          on_logits: Callable[[str, torch.Tensor, dict[str, Any]], None] | None = None
                          ) -> dict[str, Any]:
    """Per-case and mean metrics of ``net`` on preprocessed cases ``keys`` of ``folder``.

    ``subtypes`` holds the cases whose subtype is scored; ``sources`` (case -> real/phantom) adds a
    ``by_source`` summary, so real and phantom scores are never mixed up. ``previous_stage`` (a cascade's
    folder of low-res predictions, nnU-Net's ``folder_with_segs_from_previous_stage``) adds their one-hot
    ``foreground_labels`` as input channels, as nnU-Net's validation does. ``on_logits(key, logits,
    properties)`` receives each case's logits ``[C, D, H, W]`` on the preprocessed grid (next-stage export).
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

    patch = resolve_configuration(plans, configuration)["patch_size"]  # a cascade stage inherits it
    was_training = net.training
    net.eval()
    backend = for_window(NetworkBackend(net, patch, max_batch=tiles_per_batch(2, patch)))  # 2D: slice by slice
    dataset = infer_dataset_class(folder)(folder, list(keys), folder_with_segs_from_previous_stage=previous_stage)
    cases = []
    try:
        for key in keys:
            data, seg, seg_prev, properties = dataset.load_case(key)
            data = np.asarray(data, dtype=np.float32)
            if seg_prev is not None:
                data = np.vstack((data, convert_labelmap_to_one_hot(np.asarray(seg_prev), foreground_labels,
                                                                    output_dtype=data.dtype)))
            image = torch.from_numpy(data).to(device)
            result = sliding_window(image, backend, WindowConfig(patch_size=backend.patch_size, step_size=step_size))
            if on_logits is not None:
                on_logits(key, result.logits, properties)
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
