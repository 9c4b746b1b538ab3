"""The inference-default options several commands share: mirroring TTA, class weights, scales, mirror axes.

``pancreas predict / oof / serve`` override what a bundle records in ``metadata.inference``; ``pancreas
export-bundle`` records it (``record=True``). One table of what each option means, so the commands agree.
Importable without torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from pancreas.engine_config import class_weight_list, mirror_axis_list, scale_list

#: EngineConfig field -> (metavar, parser, what it is, what an unset bundle does)
OPTIONS: dict[str, tuple[str, Callable[[str], Any], str, str]] = {
    "class_weights": ("W0,W1,W2", class_weight_list,
                      "factors on the background/pancreas/lesion probabilities before the argmax, e.g. 1,1,4",
                      "plain argmax"),
    "scales": ("F0,F1", scale_list,
               ("multi-scale test-time augmentation: one pass per factor on the target spacing, probabilities "
               "averaged, e.g. 1,1.25"), "1"),
    "mirror_axes": ("A0,A1", mirror_axis_list,
                    ("network-input axes mirroring TTA flips, every non-empty subset of them: 0,1,2 = 8 passes per "
                    "patch, 2 = 2"), "all"),
}
ALL = ("tta", *OPTIONS)


def add_inference_options(parser: argparse.ArgumentParser, *, record: bool = False,
                          names: Sequence[str] = ALL) -> None:
    """``--tta`` and ``--class-weights / --scales / --mirror-axes`` (those in ``names``): overrides of the bundle's
    ``metadata.inference``, or with ``record`` the values to record there."""
    if "tta" in names:
        if record:
            parser.add_argument("--tta", action="store_true",
                                help="record mirroring test-time augmentation as the bundle's default "
                                     "(metadata.inference.tta)")
        else:
            parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                                help="mirroring test-time augmentation (default: the bundle's "
                                     "metadata.inference.tta; off when unset)")
    for name in names:
        if name == "tta":
            continue
        metavar, kind, what, unset = OPTIONS[name]
        where = f"metadata.inference.{name}"
        text = (f"record as the bundle's default ({where}): {what}" if record
                else f"{what} (default: the bundle's {where}; {unset} when unset)")
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, metavar=metavar, help=text)


def inference_overrides(args: argparse.Namespace, names: Sequence[str] = ALL) -> dict[str, Any]:
    """The parsed options as ``EngineConfig`` keyword arguments (``None``: as the bundle records)."""
    return {name: getattr(args, name) for name in names}
