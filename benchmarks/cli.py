"""Benchmarks: ``compare`` (our engine vs nnU-Net v2's own predictor, same weights) and ``load`` (locust).

Examples::

    pancreas bench compare --model pancreas/demo_bundle --cases phantoms/validation --out benchmarks/results \\
        --name compare-cpu --repeats 3 --baseline-repeats 1
    pancreas bench load --users 4 --spawn-rate 2 --duration 60s --out benchmarks/results --name load-cpu
"""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    c = sub.add_parser("compare", help="side by side with nnU-Net v2's predictor on the same weights")
    c.add_argument("--model", action="append", required=True, metavar="BUNDLE",
                   help="model bundle; repeat for optimized bundles (the first one also feeds nnU-Net)")
    c.add_argument("--variants", metavar="DIR", help="also add every bundle folder directly under DIR")
    c.add_argument("--cases", required=True, help="quiz split folder (subtype*/) or folder of *_0000.nii.gz")
    c.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    c.add_argument("--name", default="compare", help="file stem of the results (default: %(default)s)")
    c.add_argument("--repeats", type=int, default=3, help="repeats per candidate (default: %(default)s)")
    c.add_argument("--baseline-repeats", type=int, help="repeats of the slow nnU-Net candidates")
    c.add_argument("--candidates", nargs="+", default=[], metavar="GLOB",
                   help="only these candidates (globs, e.g. 'torch-*' 'ort-*'); nnunet-default always runs")
    c.add_argument("--max-cases", type=int, help="use only the first N cases")
    c.add_argument("--masks", help="keep the predicted masks in this folder (default: a temporary folder)")
    c.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before a candidate is dropped")
    c.set_defaults(_bench=_compare)

    ld = sub.add_parser("load", help="locust load test against the service")
    ld.add_argument("--model", metavar="BUNDLE", help="bundle to serve (default: the service's default)")
    ld.add_argument("--host", help="test this running service instead of starting one (e.g. http://gpu:8000)")
    ld.add_argument("--users", type=int, default=4, help="concurrent locust users (default: %(default)s)")
    ld.add_argument("--spawn-rate", type=float, default=2.0, help="users started per second (default: %(default)s)")
    ld.add_argument("--duration", default="60s", help="locust run time, e.g. 60s, 2m (default: %(default)s)")
    ld.add_argument("--sizes", nargs="+", default=["crop", "full"], choices=["crop", "full"],
                    help="phantom sizes POSTed (default: both)")
    ld.add_argument("--queue-size", type=int, help="PANCREAS_QUEUE_SIZE of the started service")
    ld.add_argument("--request-timeout", type=float,
                    help="PANCREAS_REQUEST_TIMEOUT_S of the started service (large CTs on a small CPU)")
    ld.add_argument("--payloads", help="folder of *_0000.nii.gz to POST (default: phantoms made once, cached)")
    ld.add_argument("--out", default="benchmarks/results", help="results folder (default: %(default)s)")
    ld.add_argument("--name", default="load", help="file stem of the results (default: %(default)s)")
    ld.add_argument("--overload-users", type=int, default=0,
                    help="then a second run with this many users against a queue of --overload-queue-size")
    ld.add_argument("--overload-queue-size", type=int, default=1)
    ld.add_argument("--overload-duration", default="20s")
    ld.add_argument("--overload-same-service", action="store_true",
                    help="soak: run the overload on the main run's service and queue (503s only past capacity)")
    ld.add_argument("--slow-users", type=int, default=0,
                    help="slow and stalled raw-socket clients mixed into the overload run (default: none)")
    ld.add_argument("--rss-interval", type=float, default=10.0,
                    help="seconds between samples of the started service's RSS (default: %(default)s)")
    ld.set_defaults(_bench=_load)


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmarks.compare import CompareConfig, compare

    bundles = list(args.model)
    if args.variants:
        bundles += sorted(str(p) for p in Path(args.variants).iterdir() if (p / "configs/metadata.json").is_file())
    cfg = CompareConfig(bundles=tuple(bundles), cases=args.cases, out=args.out, repeats=args.repeats,
                        baseline_repeats=args.baseline_repeats, candidates=tuple(args.candidates), name=args.name,
                        max_cases=args.max_cases, masks=args.masks, timeout_s=args.timeout, command=_command())
    result = compare(cfg)
    from benchmarks.report import summary_table

    print("\n".join(summary_table(result)))
    print(f"results: {', '.join(result['files'].values())}")
    print(result["best_line"])
    return 0


def _load(args: argparse.Namespace) -> int:
    import logging

    from benchmarks.load import LoadConfig, load_test, summary_lines

    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))  # no per-poll lines

    cfg = LoadConfig(bundle=args.model, host=args.host, users=args.users, spawn_rate=args.spawn_rate,
                     duration=args.duration, sizes=tuple(args.sizes), queue_size=args.queue_size, request_timeout_s=args.request_timeout,
                     payloads=args.payloads, out=args.out, name=args.name, overload_users=args.overload_users,
                     overload_queue_size=args.overload_queue_size, overload_duration=args.overload_duration,
                     overload_same_service=args.overload_same_service, slow_users=args.slow_users,
                     rss_interval_s=args.rss_interval, command=_command())
    result = load_test(cfg)
    print("\n".join(summary_lines(result)))
    return 0 if result["ok"] else 1


def _command() -> str:
    return "pancreas " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("pancreas") else \
        shlex.join(["python", "-m", "pancreas", *sys.argv[1:]])


def run(args: argparse.Namespace) -> int:
    return int(args._bench(args))
