"""Ablation: train head / loss / sampling variants on the same budget and compare them in one table.

Each variant changes one thing relative to the baseline options (one-factor-at-a-time) and trains the
same fold with the same seed, epochs and iterations. Variants get their own nnU-Net trainer name
(``MultiTaskTrainer_<variant>``), so their outputs sit side by side in ``nnUNet_results``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pancreas.errors import PancreasError
from training.runner import train_fold
from training.trainer import TrainOptions, with_head

logger = logging.getLogger(__name__)

Variant = Callable[[TrainOptions], TrainOptions]

#: name -> change relative to the baseline ("baseline" is the options as given)
VARIANTS: dict[str, Variant] = {
    "baseline": lambda o: o,
    "head_gap": lambda o: with_head(o, "gap"),
    "head_multiscale": lambda o: with_head(o, "multiscale"),
    "head_attention": lambda o: with_head(o, "attention"),
    "head_mask": lambda o: with_head(o, "mask"),
    "weighting_learned": lambda o: replace(o, weighting="learned"),
    "weighting_fixed": lambda o: replace(o, weighting="fixed"),
    "focal_on": lambda o: replace(o, cls_focal_gamma=2.0, seg_focal_gamma=2.0),
    "focal_off": lambda o: replace(o, cls_focal_gamma=0.0, seg_focal_gamma=0.0),
    "da5_on": lambda o: replace(o, da5=True),
    "da5_off": lambda o: replace(o, da5=False),
    "lesion_oversampling_on": lambda o: replace(o, lesion_oversample=0.5),
    "lesion_oversampling_off": lambda o: replace(o, lesion_oversample=0.0),
    "lesion_oversampling_high": lambda o: replace(o, lesion_oversample=0.9),
    "seg_focal": lambda o: replace(o, seg_focal_gamma=2.0),
    "seg_lesion_weighted": lambda o: replace(o, seg_class_weights=(1.0, 1.0, 3.0)),
    "phantoms_downweighted": lambda o: replace(o, source_weights={"phantom": 0.25}),
    "phantoms_halfweighted": lambda o: replace(o, source_weights={"phantom": 0.5}),
    "deep_supervision_off": lambda o: replace(o, deep_supervision=False),
    "finetune": lambda o: _pretrained(o),
}
DEFAULT_VARIANTS = ("baseline", "head_gap", "head_multiscale", "head_attention", "weighting_learned", "focal_on",
                    "da5_on", "lesion_oversampling_off")
COLUMNS = ("dice_whole", "dice_lesion", "macro_f1")


@dataclass
class AblationRow:
    variant: str
    head: str
    weighting: str
    focal: bool
    da5: bool
    lesion_oversampling: bool
    metrics: dict[str, Any]
    minutes: float


def _pretrained(options: TrainOptions) -> TrainOptions:
    """The baseline started from ``--pretrained-weights`` (e.g. phantom pre-training, then real fine-tuning)."""
    if not options.pretrained_weights:
        raise PancreasError("variant 'finetune' needs --pretrained-weights (the pre-trained checkpoint)")
    return options


def describe(name: str, options: TrainOptions, metrics: dict[str, Any], minutes: float) -> AblationRow:
    return AblationRow(name, options.head.variant, options.weighting,
                       options.cls_focal_gamma > 0 or options.seg_focal_gamma > 0, options.da5,
                       options.lesion_oversample > 0, metrics, minutes)


def markdown(rows: Sequence[AblationRow]) -> str:
    header = ("| variant | head | weighting | focal | DA5 | lesion oversampling | whole DSC | lesion DSC | macro-F1 "
              "| minutes |")
    lines = [header, "| --- " * 10 + "|"]
    for r in rows:
        m = r.metrics
        lines.append(f"| {r.variant} | {r.head} | {r.weighting} | {_onoff(r.focal)} | {_onoff(r.da5)} | "
                     f"{_onoff(r.lesion_oversampling)} | " + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in COLUMNS)
                     + f" | {r.minutes:.1f} |")
    return "\n".join(lines)


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def run_ablation(dataset: str | int, *, base: TrainOptions, variants: Sequence[str] = DEFAULT_VARIANTS,
                 configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans", fold: int | str = 0,
                 device: str = "cpu", threads: int | None = None, seed: int = 12345,
                 out: Path | None = None) -> tuple[list[AblationRow], dict[str, str]]:
    """Train every variant on ``fold`` with the same budget; write ``ablation.{json,md}`` to ``out``."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise PancreasError(f"unknown ablation variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    rows: list[AblationRow] = []
    out_dir = out
    for name in variants:
        options = replace(VARIANTS[name](base), evaluate=True)
        t0 = time.time()
        result = train_fold(dataset, configuration=configuration, fold=fold, plans_identifier=plans_identifier,
                            options=options, device=device, threads=threads, seed=seed,
                            trainer_name=f"MultiTaskTrainer_{name}")
        rows.append(describe(name, options, result.metrics["summary"], (time.time() - t0) / 60))
        out_dir = out_dir or result.output_folder.parent.parent / "ablation"
        logger.info("ablation %s: %s", name, rows[-1].metrics)
    files = write(rows, out_dir, base)
    return rows, files


def write(rows: Sequence[AblationRow], out: Path, base: TrainOptions) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "ablation.json", "markdown": out / "ablation.md"}
    paths["json"].write_text(json.dumps({"base_options": base.to_json(),
                                         "rows": [r.__dict__ for r in rows]}, indent=1))
    paths["markdown"].write_text("# Ablation (same budget, one change per row)\n\n" + markdown(rows) + "\n")
    return {k: str(v) for k, v in paths.items()}
