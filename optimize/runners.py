"""Minimal patch runners used by the optimize stages (parity checks, calibration choice, patch latency).

A runner maps float32 patches ``[B,1,*patch]`` to ``(seg logits [B,3,*patch], class logits [B,3])``, the
same contract as :mod:`pancreas.backends`; these are kept dependency-free so a stage can check its own
artifact before a bundle (and so an engine backend) exists for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def torch_runner(net: Any, precision: str = "fp32") -> Runner:
    """Eval-mode, no-grad torch runner on CPU; ``precision`` ``bf16`` runs the network under CPU bf16 autocast
    (:func:`pancreas.backends.torch_backend.autocast`)."""
    import torch

    from pancreas.backends.torch_backend import autocast

    net = net.eval()

    def run(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), autocast(precision):
            seg, cls = net(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)))
        return seg.float().numpy(), cls.float().numpy()

    return run


def ort_session(path: str | Path, *, threads: int | None = None) -> Any:
    """A CPU onnxruntime session with all graph optimizations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_runner(path: str | Path, *, threads: int | None = None) -> Runner:
    """Runner over an ONNX file exported by :func:`optimize.export_onnx.export_onnx`."""
    session = ort_session(path, threads=threads)

    def run(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg, cls = session.run(["seg_logits", "cls_logits"], {"image": np.ascontiguousarray(patches, np.float32)})
        return np.asarray(seg, np.float32), np.asarray(cls, np.float32)

    return run


def time_runner(runner: Runner, patches: np.ndarray, *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time in ms of one call on ``patches`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        runner(patches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(patches)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))
