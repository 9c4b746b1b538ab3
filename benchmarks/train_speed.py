"""Training speed per precision: seconds per epoch of the same recipe in fp32 and in bf16, in one run.

Each precision trains the same fold for a few epochs (no held-out evaluation), twice, in alternating order
(fp32, bf16, fp32, bf16) so that drift of a shared machine hits both; the first epoch of each run (warm-up) is
left out and the median of the rest is the figure. Writes ``<out>/<name>.json`` and ``.md`` with the command
and the machine::

    python -m benchmarks.train_speed --dataset 503 --workdir runs/c --plans nnUNetPlansTiny --threads 2 \\
        --out benchmarks/results --name train-speed-cpu

The trainer folders it makes (``TrainSpeed_<precision>_<k>``) are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info, machine_line

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


def epoch_seconds(dataset: str, *, workdir: Path, plans: str, fold: int, precision: str, epochs: int,
                  iters: int, threads: int, workers: int, tag: str) -> list[float]:
    """Seconds of each epoch of one short training run (the shipped recipe's optimizer and data options)."""
    from training.nnunet_env import configure
    from training.runner import train_fold
    from training.trainer import TrainOptions

    configure(workdir)
    options = TrainOptions(epochs=epochs, iters_per_epoch=iters, val_iters=2, optimizer="adamw", initial_lr=3e-3,
                           warmup_epochs=2, cls_sources=("phantom",), num_workers=workers, precision=precision,
                           evaluate=False, save_every=10_000)
    result = train_fold(dataset, configuration="3d_fullres", fold=fold, plans_identifier=plans, options=options,
                        threads=threads, seed=2026, trainer_name=tag)
    shutil.rmtree(result.output_folder.parent, ignore_errors=True)
    return [float(h["time_s"]) for h in result.history]


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    runs: dict[str, list[list[float]]] = {p: [] for p in PRECISIONS}
    for k in range(args.rounds):
        for precision in PRECISIONS:
            times = epoch_seconds(args.dataset, workdir=args.workdir, plans=args.plans, fold=args.fold,
                                  precision=precision, epochs=args.epochs, iters=args.iters_per_epoch,
                                  threads=args.threads, workers=args.workers, tag=f"TrainSpeed_{precision}_{k}")
            logger.info("%s round %d: %s s/epoch", precision, k + 1, [round(t, 2) for t in times])
            runs[precision].append(times)
    median = {p: statistics.median(t for r in runs[p] for t in r[1:]) for p in PRECISIONS}
    return {"command": command, "machine": machine_info(), "dataset": args.dataset, "plans": args.plans, "fold": args.fold,
            "threads": args.threads, "workers": args.workers, "epochs_per_run": args.epochs,
            "iters_per_epoch": args.iters_per_epoch, "epoch_seconds": runs, "median_s_per_epoch": median,
            "speedup_bf16": median["fp32"] / median["bf16"],
            "epochs_in_60_min": {p: int(3600 // median[p]) for p in PRECISIONS}}


def markdown(r: dict[str, Any], data_note: str) -> str:
    rows = [f"| {p} | {r['median_s_per_epoch'][p]:.2f} | {r['epochs_in_60_min'][p]} | "
            f"{r['median_s_per_epoch']['fp32'] / r['median_s_per_epoch'][p]:.2f}x |" for p in PRECISIONS]
    return "\n".join([
        "# Training speed per precision (CPU)", "",
        (f"Machine: {machine_line(r['machine'])}. Data: {data_note} (dataset {r['dataset']}, plans {r['plans']}, "
        f"fold {r['fold']}). {r['threads']} torch thread(s), {r['workers']} augmentation worker(s), "
        f"{r['iters_per_epoch']} iterations per epoch (the demo recipe's: 25), {len(r['epoch_seconds']['fp32'])} runs of "
        f"{r['epochs_per_run']} epochs per precision in alternating order; median over every epoch but each run's "
        "first."), "",
        f"Command: `{r['command']}`", "",
        "| precision | s / epoch (median) | epochs in 60 min | speed vs fp32 |", "| --- | --- | --- | --- |", *rows, "",
        ("bf16 is `torch.autocast('cpu', dtype=torch.bfloat16)` around the network (oneDNN bf16 convolutions; the "
        "loss in float32, weights float32: `pancreas train --precision bf16`). Whether bf16 keeps the accuracy is a "
        "separate question, answered on real held-out cases in `real-quiz-candidates.md`."), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="a planned dataset (id or name)")
    p.add_argument("--workdir", type=Path, required=True, help="its nnU-Net work folder")
    p.add_argument("--plans", default="nnUNetPlansTiny")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (default: %(default)s)")
    p.add_argument("--iters-per-epoch", type=int, default=25, help="(default: %(default)s, the demo recipe's)")
    p.add_argument("--rounds", type=int, default=2, help="runs per precision (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="augmentation processes (default: in-process)")
    p.add_argument("--data-note", default="unnamed", help="what the dataset holds, for the page")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="train-speed-cpu")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args, "python -m benchmarks.train_speed " + shlex.join(argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(result, args.data_note))
    logger.info("wrote %s: fp32 %.2f s/epoch, bf16 %.2f s/epoch (%.2fx)", args.out / f"{args.name}.md",
                result["median_s_per_epoch"]["fp32"], result["median_s_per_epoch"]["bf16"], result["speedup_bf16"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
