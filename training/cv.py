"""5-fold cross-validation on nnU-Net's splits and its summary (JSON, markdown, PNG of training curves)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.runner import FoldResult, train_fold
from training.trainer import TrainOptions

logger = logging.getLogger(__name__)

METRICS = ("dice_whole", "dice_lesion", "macro_f1")
CURVES = (("train_loss", "val_loss"), ("dice_pancreas", "dice_lesion"), ("patch_f1",))


@dataclass
class CVSummary:
    """Mean ± sd over folds of the held-out metrics, plus each fold's numbers and training history."""

    folds: list[dict[str, Any]]
    histories: dict[str, list[dict[str, Any]]]
    options: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for m in METRICS:
            vals = np.array([f[m] for f in self.folds], dtype=float)
            out[m] = {"mean": float(np.nanmean(vals)) if len(vals) else float("nan"),
                      "sd": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0}
        return out

    def to_json(self) -> dict[str, Any]:
        return {"folds": self.folds, "summary": self.stats, "options": self.options, "histories": self.histories}

    def markdown(self) -> str:
        lines = ["| fold | cases | whole DSC | lesion DSC | macro-F1 |", "| --- | --- | --- | --- | --- |"]
        for f in self.folds:
            lines.append(f"| {f['fold']} | {f['n_cases']} | {f['dice_whole']:.4f} | {f['dice_lesion']:.4f} | "
                         f"{f['macro_f1']:.4f} |")
        st = self.stats
        lines.append("| **mean ± sd** | | " + " | ".join(f"{st[m]['mean']:.4f} ± {st[m]['sd']:.4f}" for m in METRICS)
                     + " |")
        return "\n".join(lines)

    def write(self, out: Path) -> dict[str, str]:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "cv_summary.json", "markdown": out / "cv_summary.md", "png": out / "cv_curves.png"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=1))
        paths["markdown"].write_text("# Cross-validation summary\n\n" + self.markdown() + "\n")
        plot_curves(self.histories, paths["png"])
        self.files = {k: str(v) for k, v in paths.items()}
        return self.files


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One panel per metric group, one line per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for ax, keys in zip(axes, CURVES):
        for fold, hist in histories.items():
            epochs = [h["epoch"] + 1 for h in hist]
            for key in keys:
                ax.plot(epochs, [h.get(key, np.nan) for h in hist], label=f"{fold}: {key}")
        ax.set_xlabel("epoch")
        ax.set_title(", ".join(keys))
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize_folds(results: Sequence[FoldResult], options: TrainOptions) -> CVSummary:
    folds = [{"fold": r.fold, **r.metrics["summary"]} for r in results]
    return CVSummary(folds, {f"fold_{r.fold}": r.history for r in results}, options.to_json())


def run_cv(dataset: str | int, *, configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans",
           options: TrainOptions | None = None, device: str = "cpu", threads: int | None = None,
           seed: int = 12345, folds: Sequence[int] = (0, 1, 2, 3, 4), out: Path | None = None,
           resume: bool = False) -> CVSummary:
    """Train ``folds`` one after another and write the CV summary next to them (or into ``out``); ``resume``
    continues each fold from its newest checkpoint (a finished fold is only evaluated again)."""
    options = options or TrainOptions()
    results = []
    for fold in folds:
        results.append(train_fold(dataset, configuration=configuration, fold=fold,
                                  plans_identifier=plans_identifier, options=options, device=device,
                                  threads=threads, seed=seed + fold, resume=resume))
    summary = summarize_folds(results, options)
    summary.write(out or results[0].output_folder.parent)
    logger.info("CV summary written to %s", summary.files["markdown"])
    return summary
