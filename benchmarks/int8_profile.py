"""Where INT8 time goes on this CPU: onnxruntime per-operator profiles and an INT8-vs-width sweep.

``python -m benchmarks.int8_profile --bundle pancreas/demo_bundle --data runs/demo/phantoms`` writes
``benchmarks/results/int8_profile.md``:

* per-operator kernel time (onnxruntime's own profiler) of the bundle's fp32 and int8 ONNX models on real
  preprocessed patches, so the int8 gain of the convolutions is separated from the Q/DQ and float ops
  around them;
* the same network at 1×, 2× and 4× the channel width (random weights, static QDQ INT8 calibrated on the
  same real patches), fp32 vs int8 per patch, to show how the INT8 gain grows with the channel count.
  Speed only: these widened networks are untrained, their accuracy means nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from optimize.data import phantom_patches
from optimize.export_onnx import export_onnx
from optimize.quantize import Int8Config, quantize_with, sensitive_nodes
from pancreas.bundle import Bundle, provenance
from pancreas.network import architecture_kwargs, build_network, count_parameters

logger = logging.getLogger(__name__)


@dataclass
class OpProfile:
    """Mean kernel milliseconds per run, by ONNX op type, and the wall time per run."""

    ms_by_op: dict[str, float]
    wall_ms: float

    @property
    def kernel_ms(self) -> float:
        return sum(self.ms_by_op.values())


def op_profile(path: str | Path, patches: np.ndarray, *, threads: int = 1, runs: int = 10) -> OpProfile:
    """Profile ``runs`` calls of the ONNX model at ``path`` on ``patches`` with onnxruntime's profiler."""
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(patches, np.float32)}
        session.run(None, feed)  # warm-up: profiled too, so kernel times are averaged over runs + 1 calls
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            walls.append((time.perf_counter() - t0) * 1e3)
        events = json.loads(Path(session.end_profiling()).read_text())
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
    calls = runs + 1
    return OpProfile({op: us / calls / 1e3 for op, us in total.most_common()}, float(np.median(walls)))


@dataclass
class SweepRow:
    width: float
    features: list[int]
    params: int
    fp32_ms: float
    int8_ms: float
    conv_fp32_ms: float
    conv_int8_ms: float


def _conv_ms(p: OpProfile, ops: tuple[str, ...]) -> float:
    return sum(v for k, v in p.ms_by_op.items() if k in ops)


FLOAT_CONV = ("Conv", "ConvTranspose")
INT8_CONV = ("QLinearConv", "NhwcQLinearConv", "QLinearConvTranspose")
ALL_CONV = FLOAT_CONV + INT8_CONV  # the int8 graph keeps some float convs (first, last, transposed)


def width_sweep(bundle: Any, calib: np.ndarray, patches: np.ndarray, workdir: Path, *,
                widths: tuple[float, ...] = (1.0, 2.0, 4.0), threads: int = 1, runs: int = 5) -> list[SweepRow]:
    """fp32 vs int8 per patch for the bundle's architecture at several channel widths (random weights)."""
    network = bundle.metadata.network
    _, kwargs, _ = architecture_kwargs(bundle.plans, network)
    patch = [int(p) for p in bundle.configuration["patch_size"]]
    rows = []
    for width in widths:
        cfg = network.model_copy(deep=True)
        cfg.arch_kwargs_override = {**cfg.arch_kwargs_override,
                                    "features_per_stage": [max(2, round(f * width)) for f in kwargs["features_per_stage"]]}
        torch.manual_seed(0)
        net = build_network(bundle.plans, cfg).eval()
        fp32 = export_onnx(net, patch, workdir / f"w{width}.onnx")
        int8 = workdir / f"w{width}_int8.onnx"
        quantize_with(fp32, int8, calib, "minmax", Int8Config(methods=("minmax",)), workdir / f"w{width}_cache",
                      sensitive_nodes(fp32))
        a, b = op_profile(fp32, patches, threads=threads, runs=runs), op_profile(int8, patches, threads=threads, runs=runs)
        n = len(patches)
        rows.append(SweepRow(width, cfg.arch_kwargs_override["features_per_stage"], count_parameters(net),
                             a.wall_ms / n, b.wall_ms / n, _conv_ms(a, ALL_CONV) / n, _conv_ms(b, ALL_CONV) / n))
        logger.info("width %.1f: %s", width, rows[-1])
    return rows


def render(fp32: OpProfile, int8: OpProfile, sweep: list[SweepRow], *, header: str, batch: int = 1) -> str:
    """Markdown: per-operator table (per patch: run times divided by ``batch``) and the width sweep."""
    ops = sorted(set(fp32.ms_by_op) | set(int8.ms_by_op), key=lambda o: -(fp32.ms_by_op.get(o, 0) + int8.ms_by_op.get(o, 0)))
    lines = [header, "", "## Per-operator kernel time, ms per patch (onnxruntime profiler)", "",
             "| op type | fp32 ms | int8 ms |", "|---|---|---|"]
    for op in ops:
        cells = [f"{d[op] / batch:.1f}" if op in d else "–" for d in (fp32.ms_by_op, int8.ms_by_op)]
        lines.append(f"| {op} | {cells[0]} | {cells[1]} |")
    conv_a, conv_b = _conv_ms(fp32, ALL_CONV) / batch, _conv_ms(int8, ALL_CONV) / batch
    lines += [f"| **all kernels** | **{fp32.kernel_ms / batch:.1f}** | **{int8.kernel_ms / batch:.1f}** |",
              f"| wall time | {fp32.wall_ms / batch:.1f} | {int8.wall_ms / batch:.1f} |", "",
              (f"All convolutions (Conv, ConvTranspose, QLinearConv): {conv_a:.1f} → {conv_b:.1f} ms per patch "
               f"({conv_a / conv_b:.2f}×); whole graph {fp32.wall_ms / int8.wall_ms:.2f}×. The int8 graph keeps "
               "the first conv, the last segmentation conv, the transposed convs and the head in float, and "
               "InstanceNorm/LeakyReLU run in float between Q/DQ pairs."), "",
              "## INT8 gain vs channel width (same architecture, random weights, speed only)", "",
              "| width | features per stage | params | fp32 ms/patch | int8 ms/patch | speedup | all convs fp32 → int8 ms | conv speedup |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r.width:g}× | {'-'.join(map(str, r.features))} | {r.params:,} | {r.fp32_ms:.1f} | "
                     f"{r.int8_ms:.1f} | {r.fp32_ms / r.int8_ms:.2f}× | {r.conv_fp32_ms:.1f} → {r.conv_int8_ms:.1f} | "
                     f"{r.conv_fp32_ms / r.conv_int8_ms if r.conv_int8_ms else float('nan'):.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle with models/model.onnx (+ int8 via --int8)")
    parser.add_argument("--int8-bundle", type=Path, required=True, help="bundle holding models/model_int8.onnx")
    parser.add_argument("--data", type=Path, required=True, help="quiz-layout phantoms (train/, validation/)")
    parser.add_argument("--report", type=Path, default=Path("benchmarks/results/int8_profile.md"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2, help="patches per run (the engine's batch size)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bundle, qbundle = Bundle.load(args.bundle), Bundle.load(args.int8_bundle)
    patches = phantom_patches(bundle, args.data, split="validation", max_cases=args.batch, per_case=1, seed=3).images
    calib = phantom_patches(bundle, args.data, split="train", max_cases=16, per_case=2, seed=1).images
    fp32_path = next(qbundle.path(a) for a in qbundle.metadata.artifacts if a.kind == "onnx" and a.precision == "fp32")
    int8_path = next(qbundle.path(a) for a in qbundle.metadata.artifacts if a.kind == "onnx" and a.precision == "int8")
    a = op_profile(fp32_path, patches, threads=args.threads)
    b = op_profile(int8_path, patches, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="int8-sweep-") as tmp:
        sweep = width_sweep(bundle, calib, patches, Path(tmp), widths=tuple(args.widths), threads=args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    v = provenance("").versions
    header = (f"# INT8 on this CPU: where the time goes\n\n{cpu} ({', '.join(isa) or 'no VNNI/AMX'}), "
              f"{args.threads} thread(s), onnxruntime {v.get('onnxruntime')}, batch {args.batch} real preprocessed "
              f"validation patches of {list(bundle.configuration['patch_size'])}. Models: `{fp32_path}` and "
              f"`{int8_path}`.\nCommand: `python -m benchmarks.int8_profile --bundle {args.bundle} --int8-bundle "
              f"{args.int8_bundle} --data {args.data} --threads {args.threads} --batch {args.batch}`")
    args.report.write_text(render(a, b, sweep, header=header, batch=len(patches)))
    logger.info("wrote %s", args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
