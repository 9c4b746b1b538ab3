"""One benchmark candidate in its own process.

Every candidate runs in a fresh ``spawn``-ed process that lives for the whole comparison, so that

* peak RSS is the candidate's own (no allocator caches, weights or compiled graphs of another candidate),
* one-time costs (imports, loading weights, compiling, session creation) are paid once, in ``setup_s``,
* runs can still alternate between candidates (the orchestrator sends one case at a time to each worker).

Peak RSS per case: the kernel's high-water mark is reset through ``/proc/self/clear_refs`` (``5``) before the
case and read from ``VmHWM`` after it; where that is not permitted a 5 ms psutil sampling thread is used.
GPU memory: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (torch allocations only).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakRSS:
    """Peak resident set size of this process during a ``with`` block, in MB."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = self._reset_hwm()

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
            return _read_hwm_kb() is not None
        except OSError:
            return False

    def __enter__(self) -> PeakRSS:  # noqa: PYI034
        if self._kernel:
            self._reset_hwm()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self._kernel:
            self.peak_mb = (_read_hwm_kb() or 0) / 1024
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()

    @property
    def method(self) -> str:
        return "VmHWM (clear_refs)" if self._kernel else "psutil sampling (5 ms)"


def _read_hwm_kb() -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _gpu_reset() -> bool:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    return False


def _gpu_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _setup(candidate: dict[str, Any], warmup_image: str) -> tuple[Any, dict[str, Any]]:
    from benchmarks.candidates import RUNNERS
    from pancreas.bundle import Bundle

    t0 = time.perf_counter()
    runner = RUNNERS[candidate["runner"]](Bundle.load(candidate["bundle"]), dict(candidate["options"]))
    t1 = time.perf_counter()
    runner.warmup(warmup_image)
    t2 = time.perf_counter()
    return runner, {"load_s": t1 - t0, "warmup_s": t2 - t1, "info": runner.info}


def _run_case(runner: Any, image: str, output: str) -> dict[str, Any]:
    Path(output).unlink(missing_ok=True)
    gpu = _gpu_reset()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        stages = runner.predict_file(image, output)
        total = (time.perf_counter() - t0) * 1e3
    if not Path(output).is_file():
        raise RuntimeError(f"candidate wrote no mask to {output}")
    return {"total_ms": total, "stages_ms": stages, "peak_rss_mb": rss.peak_mb, "rss_method": rss.method,
            "gpu_peak_mb": _gpu_peak_mb() if gpu else None}


def worker_main(conn: Connection, candidate: dict[str, Any], warmup_image: str, log_level: int) -> None:
    """Process entry point: set up, answer ``("run", image, output)`` messages until ``("stop",)``.

    SIGINT is ignored here: Ctrl-C goes to the orchestrator, which reports what finished and stops workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runner, setup = _setup(candidate, warmup_image)
        conn.send({"ok": True, **setup})
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which skips the candidate
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        try:
            conn.send({"ok": True, **_run_case(runner, msg[1], msg[2])})
        except Exception as exc:  # noqa: BLE001
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


class Worker:
    """Parent-side handle of a candidate's process."""

    def __init__(self, candidate: dict[str, Any], warmup_image: str, *, timeout_s: float) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.timeout_s = timeout_s
        self.process = ctx.Process(target=worker_main, name=f"bench-{candidate['name']}",
                                   args=(child, candidate, warmup_image, logging.getLogger().level), daemon=True)
        self.process.start()
        child.close()

    def _receive(self) -> dict[str, Any]:
        if not self._conn.poll(self.timeout_s):
            self.close()
            return {"ok": False, "error": f"no answer within {self.timeout_s:.0f} s"}
        try:
            return dict(self._conn.recv())
        except (EOFError, OSError):
            return {"ok": False, "error": f"worker died (exit code {self.process.exitcode})"}

    def ready(self) -> dict[str, Any]:
        return self._receive()

    def run(self, image: str, output: str) -> dict[str, Any]:
        try:
            self._conn.send(("run", image, output))
        except (BrokenPipeError, OSError):
            return {"ok": False, "error": "worker is gone"}
        return self._receive()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()
