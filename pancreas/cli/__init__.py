"""The ``pancreas`` command: one entry point, one thin module per subcommand.

:data:`COMMANDS` maps each subcommand to the module path of its CLI, which lives beside its stage
(``pancreas/cli/`` for the core's own, ``training/cli/``, ``optimize/cli.py``, ...) and exposes two functions:

* ``add_arguments(parser: argparse.ArgumentParser) -> None``
* ``run(args: argparse.Namespace) -> int``

Modules are imported lazily so that ``pancreas synth`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pancreas.cli.demo", "run the bundled demo model on a fresh phantom CT"),
    "synth": ("pancreas.cli.synth", "write synthetic abdominal CT phantoms in the quiz layout"),
    "convert": ("training.cli.convert", "convert a quiz-layout folder into an nnU-Net v2 raw dataset"),
    "evaluate": ("pancreas.cli.evaluate", "score predicted masks and subtypes against ground truth"),
    "plan": ("training.cli.plan", "nnU-Net fingerprint, plan and preprocess a dataset"),
    "train": ("training.cli.train", "train the multi-task network (one fold or 5-fold CV)"),
    "ablate": ("training.cli.ablate", "train head/loss variants on the same budget and compare"),
    "oof": ("training.cli.oof", "out-of-fold cross-validation of a fold-ensemble bundle, per data source"),
    "find-best": ("training.cli.find_best", "choose the best configuration or ensemble by out-of-fold scores"),
    "predict": ("pancreas.cli.predict", "predict masks and subtypes for a folder of CTs"),
    "export-bundle": ("training.cli.export_bundle", "write a model bundle from a training output"),
    "optimize": ("optimize.cli", "ONNX / FP16 / INT8 / pruning / distillation / TensorRT"),
    "serve": ("service.cli", "serve a model bundle over HTTP (FastAPI + uvicorn)"),
    "bench": ("benchmarks.cli", "benchmarks: compare against nnU-Net v2, load tests"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Commands whose module is present (lets the CLI grow one module at a time)."""
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pancreas", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _available().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        logging.getLogger("pancreas").debug("command failed", exc_info=True)
        sys.stderr.write(f"pancreas {args.command}: error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
