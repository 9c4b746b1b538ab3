"""Describe the machine a benchmark ran on (CPU model, cores, memory, GPU, library versions)."""

from __future__ import annotations

import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("torch", "nnunetv2", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy", "pancreas-mtl")


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """Name of CUDA device 0, or None without a usable GPU (torch is imported only if already loaded)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of this machine."""
    import psutil

    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            continue
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu_name(),
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for titles and table headers."""
    v = info.get("versions", {})
    gpu = info.get("gpu") or "no GPU"
    return (f"{info['cpu']}, {info['cores_usable']} cores, {info['memory_gb']} GB RAM, {gpu}, "
            f"torch {v.get('torch', '?')}")
