#!/usr/bin/env python3
"""Container entrypoint: make sure a TensorRT engine matches this GPU, then ``exec pancreas serve``.

Subcommands (``python docker/entrypoint.py COMMAND``):

* ``serve [ARGS…]`` (default): resolve the bundle (``PANCREAS_BUNDLE``, else the packaged demo bundle),
  decide whether a TensorRT engine is needed, build and cache it if it is missing or was built for another
  GPU / TensorRT version, then replace this process with ``python -m pancreas serve ARGS…``.
* ``build-engine``: the same decision and build, then exit (the compose ``engine-build`` one-shot job).
* ``plan``: print the decision as JSON and exit (no build, no serve).
* ``healthcheck``: exit 0 when ``GET /healthz`` on ``127.0.0.1:$PANCREAS_PORT`` answers 200 (Docker HEALTHCHECK).

Engines are cached under ``PANCREAS_ENGINE_CACHE`` (default ``/engines``, a named volume in docker-compose.yml) in one folder per
(source bundle, GPU, compute capability, TensorRT version, precision), e.g.
``demo-3f2a9c1b7d0e__nvidia-h100-80gb-hbm3__sm90__trt10.16.1.11__fp16/``. That folder is a complete bundle
written by ``pancreas optimize SRC --recipe … --out …`` plus a stamp ``pancreas-engine.json`` naming what it was
built for. A folder whose stamp does not match the running GPU/TensorRT is never served.

Environment (besides the service's own ``PANCREAS_*`` settings):

* ``PANCREAS_ENGINE`` = ``auto`` (build when useful, fall back to the bundle as-is if the build fails),
  ``require`` (fail when no engine can be built), ``rebuild`` (always rebuild), ``off`` (never build).
* ``PANCREAS_ENGINE_PRECISION`` = ``fp16`` (default), ``fp32`` or ``int8``.
* ``PANCREAS_ENGINE_RECIPE``: override the ``pancreas optimize`` recipe (default from the precision).
* ``PANCREAS_ENGINE_CACHE``: cache folder.

Everything that touches a GPU or TensorRT is import-guarded, so on a CPU-only machine the script logs why no
engine is built and serves the bundle as it is (onnxruntime or torch on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

logger = logging.getLogger("pancreas.entrypoint")

STAMP = "pancreas-engine.json"
DEFAULT_CACHE = "/engines"
ENGINE_MODES = ("auto", "require", "rebuild", "off")
ENGINE_PRECISIONS = ("fp16", "fp32", "int8")
#: ``pancreas optimize`` recipe per engine precision (the ONNX export runs first automatically; int8 builds
#: the calibrated QDQ ONNX model, then the engine from it).
RECIPES: dict[str, str] = {"fp32": "tensorrt:fp32", "fp16": "tensorrt:fp16", "int8": "int8,tensorrt:int8"}
#: Backends for which a TensorRT engine is worth building.
ENGINE_BACKENDS = ("auto", "tensorrt")


# ---- what is this machine ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Accelerator:
    """The GPU and TensorRT this container sees (``None`` fields: not available)."""

    gpu_name: str | None = None
    compute_capability: str | None = None  # "9.0"
    tensorrt_version: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """Folder-name fragment naming the GPU, compute capability and TensorRT version."""
        sm = (self.compute_capability or "na").replace(".", "")
        return f"{_slug(self.gpu_name or 'nogpu')}__sm{sm}__trt{self.tensorrt_version or 'none'}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


def probe_accelerator() -> Accelerator:
    """The first CUDA device and the TensorRT version, as the engine builder records them; never raises."""
    # imported here, like every pancreas import of this script, so that `healthcheck` stays a bare stdlib call
    from pancreas.backends.tensorrt_build import TensorRTUnavailableError, gpu_identity, require_tensorrt

    notes: list[str] = []
    gpu = cc = trt = None
    try:
        gpu, cc = gpu_identity("cuda:0")
    except TensorRTUnavailableError:
        notes.append("torch.cuda.is_available() is False (no GPU visible to this container)")
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install must not stop the CPU fallback
        notes.append(f"torch could not query CUDA ({type(exc).__name__}: {exc})")
    try:
        trt = str(require_tensorrt().__version__)
    except Exception as exc:  # noqa: BLE001 - ImportError or a missing libnvinfer both mean "no TensorRT"
        notes.append(f"`import tensorrt` failed ({type(exc).__name__}: {exc})")
    return Accelerator(gpu, cc, trt, tuple(notes))


# ---- options and decision ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineOptions:
    """Entrypoint options, read from the environment by :meth:`from_env`."""

    bundle: Path
    backend: str = "auto"
    mode: str = "auto"
    precision: str = "fp16"
    cache_dir: Path = Path(DEFAULT_CACHE)
    recipe: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineOptions:
        mode = env.get("PANCREAS_ENGINE", "auto").strip().lower() or "auto"
        precision = env.get("PANCREAS_ENGINE_PRECISION", "fp16").strip().lower() or "fp16"
        if mode not in ENGINE_MODES:
            raise ValueError(f"PANCREAS_ENGINE={mode!r} is not one of {ENGINE_MODES}")
        if precision not in ENGINE_PRECISIONS:
            raise ValueError(f"PANCREAS_ENGINE_PRECISION={precision!r} is not one of {ENGINE_PRECISIONS}")
        return cls(bundle=resolve_bundle(env), backend=env.get("PANCREAS_BACKEND", "auto").strip() or "auto",
                   mode=mode, precision=precision,
                   cache_dir=Path(env.get("PANCREAS_ENGINE_CACHE") or DEFAULT_CACHE),
                   recipe=env.get("PANCREAS_ENGINE_RECIPE") or None)


def resolve_bundle(env: Mapping[str, str]) -> Path:
    """``PANCREAS_BUNDLE`` if set (it must exist), else the demo bundle packaged with pancreas."""
    raw = env.get("PANCREAS_BUNDLE", "").strip()
    if raw:
        path = Path(raw)
        if not (path / "configs" / "metadata.json").is_file():
            raise FileNotFoundError(f"PANCREAS_BUNDLE={raw!r} is not a model bundle (no configs/metadata.json); "
                                    "mount a bundle there (see docker/README.md) or unset it for the demo bundle")
        return path
    from pancreas.bundle import default_bundle_path

    return default_bundle_path()


@dataclass(frozen=True)
class Decision:
    """What to serve: ``action`` is ``serve-as-is``, ``use-bundle-engine``, ``use-cached-engine`` or ``build``."""

    action: str
    bundle: Path
    reason: str
    backend: str | None = None
    precision: str | None = None
    engine_dir: Path | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}, indent=2)


def bundle_key(bundle: Path) -> str:
    """Stable id of a source bundle: its name plus a hash of its metadata (changes when it is re-exported)."""
    meta_bytes = (bundle / "configs" / "metadata.json").read_bytes()
    name = json.loads(meta_bytes).get("name", bundle.name)
    return f"{_slug(str(name))}-{hashlib.sha256(meta_bytes).hexdigest()[:12]}"


def engine_dir_for(opts: EngineOptions, acc: Accelerator) -> Path:
    return opts.cache_dir / f"{bundle_key(opts.bundle)}__{acc.tag}__{opts.precision}"


def expected_stamp(opts: EngineOptions, acc: Accelerator) -> dict[str, str | None]:
    """The fields a cached engine's stamp must carry to be served on this machine."""
    return {"source_bundle_key": bundle_key(opts.bundle), "gpu_name": acc.gpu_name,
            "compute_capability": acc.compute_capability, "tensorrt_version": acc.tensorrt_version,
            "precision": opts.precision}


def stamp_mismatch(engine_dir: Path, expected: Mapping[str, str | None]) -> str | None:
    """``None`` if ``engine_dir`` holds a stamp matching ``expected``, else why not."""
    path = engine_dir / STAMP
    if not path.is_file():
        return f"no engine cached at {engine_dir}"
    try:
        stamp = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"engine stamp {path} is unreadable ({exc})"
    from pancreas.backends.tensorrt_build import EngineTarget, engine_mismatch

    target_fields = {f.name for f in fields(EngineTarget)}  # the GPU/TensorRT part: the builder's own rule
    diffs = [engine_mismatch(EngineTarget.of(stamp), EngineTarget.of(expected))]
    diffs += [f"{k}: built for {stamp.get(k)!r}, this container has {v!r}"
              for k, v in expected.items() if k not in target_fields and str(stamp.get(k)) != str(v)]
    return "; ".join(d for d in diffs if d) or None


def bundle_engine_mismatch(bundle: Path, acc: Accelerator, precision: str) -> str | None:
    """``None`` if the bundle itself ships a TensorRT engine built for this GPU/TensorRT (the builder's own
    rule, :func:`pancreas.backends.tensorrt_build.engine_mismatch`, on the ``info["engine"]`` metadata that
    ``pancreas optimize`` records) at ``precision``."""
    from pancreas.backends.tensorrt_build import EngineTarget, engine_mismatch

    here = EngineTarget(acc.gpu_name, acc.compute_capability, acc.tensorrt_version)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    engines = [a for a in meta.get("artifacts", []) if a.get("kind") == "tensorrt"]
    if not engines:
        return f"bundle {bundle} has no TensorRT engine"
    reasons = []
    for art in engines:
        built = (art.get("info") or {}).get("engine") or {}
        diffs = [engine_mismatch(EngineTarget.of(built), here)]
        if art.get("precision") != precision:
            diffs.append(f"precision: engine {art.get('precision')!r} vs this container {precision!r}")
        if not any(diffs):
            return None
        reasons.append(f"{art.get('path')}: " + ", ".join(d for d in diffs if d))
    return "bundle engine(s) built elsewhere: " + "; ".join(reasons)


def decide(opts: EngineOptions, acc: Accelerator) -> Decision:
    """Pure decision: serve the bundle as-is, serve an existing engine, or build one. Raises if impossible."""
    as_is = Decision("serve-as-is", opts.bundle, "", notes=acc.notes)
    if opts.mode == "off":
        return _with(as_is, reason="PANCREAS_ENGINE=off: engine build disabled")
    if opts.backend not in ENGINE_BACKENDS:
        return _with(as_is, reason=f"PANCREAS_BACKEND={opts.backend}: no TensorRT engine needed")
    missing = ("no CUDA GPU" if acc.gpu_name is None else "TensorRT is not installed"
               if acc.tensorrt_version is None else None)
    if missing:
        if opts.mode == "require" or opts.backend == "tensorrt":
            raise RuntimeError(f"a TensorRT engine is required (PANCREAS_ENGINE={opts.mode}, PANCREAS_BACKEND="
                               f"{opts.backend}) but this container has {missing}: {'; '.join(acc.notes)}. "
                               "Run with the GPU image and `--gpus all`, or set PANCREAS_BACKEND=auto")
        return _with(as_is, reason=f"{missing}; serving {opts.bundle} as-is (onnxruntime/torch)")
    target = engine_dir_for(opts, acc)
    engine = Decision("build", target, "", backend="tensorrt", precision=opts.precision, engine_dir=target,
                      notes=acc.notes)
    if opts.mode == "rebuild":
        return _with(engine, reason="PANCREAS_ENGINE=rebuild: rebuilding unconditionally")
    own_engine = bundle_engine_mismatch(opts.bundle, acc, opts.precision)
    if own_engine is None:
        return Decision("use-bundle-engine", opts.bundle, "the bundle's own TensorRT engine matches this GPU",
                        backend="tensorrt", precision=opts.precision, notes=acc.notes)
    stale = stamp_mismatch(target, expected_stamp(opts, acc))
    if stale is None:
        return _with(engine, action="use-cached-engine", reason=f"cached engine {target} matches this GPU")
    return _with(engine, reason=f"{own_engine}; {stale}")


def _with(decision: Decision, **changes: object) -> Decision:
    return Decision(**{**asdict(decision), **changes})  # type: ignore[arg-type]


# ---- building ---------------------------------------------------------------------------------------
def default_recipe(precision: str) -> str:
    return RECIPES[precision]


@contextlib.contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """Exclusive lock on the cache so that two replicas never build the same engine at once."""
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_tensorrt_engine(opts: EngineOptions, acc: Accelerator, target: Path) -> Path:
    """Run ``pancreas optimize`` into a temp folder, stamp it, then move it to ``target`` atomically."""
    recipe = opts.recipe or default_recipe(opts.precision)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    cmd = [sys.executable, "-m", "pancreas", "-v", "optimize", str(opts.bundle), "--recipe", recipe,
           "--out", str(tmp)]
    logger.info("building TensorRT engine: %s", " ".join(cmd))
    start = time.perf_counter()
    try:
        subprocess.run(cmd, check=True)
    except BaseException:
        _rmtree(tmp)  # never leave a half-built engine folder in the cache
        raise
    seconds = time.perf_counter() - start
    stamp = {**expected_stamp(opts, acc), "source_bundle": str(opts.bundle), "recipe": recipe,
             "command": " ".join(cmd), "build_seconds": round(seconds, 1),
             "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    (tmp / STAMP).write_text(json.dumps(stamp, indent=2))
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        _rmtree(old)
    tmp.rename(target)
    logger.info("cached TensorRT engine bundle %s (built in %.1f s)", target, seconds)
    return target


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def prepare(env: Mapping[str, str], acc: Accelerator | None = None) -> tuple[Decision, dict[str, str]]:
    """Decide, build if needed, and return the decision plus the environment for ``pancreas serve``."""
    opts = EngineOptions.from_env(env)
    acc = acc if acc is not None else probe_accelerator()
    if opts.backend in ENGINE_BACKENDS and opts.mode != "off" and acc.gpu_name and acc.tensorrt_version:
        with cache_lock(opts.cache_dir):
            decision = _decide_and_build(opts, acc)
    else:
        decision = decide(opts, acc)
    logger.info("engine decision: %s: %s", decision.action, decision.reason)
    for note in decision.notes:
        logger.info("environment: %s", note)
    serve_env = dict(env)
    serve_env["PANCREAS_BUNDLE"] = str(decision.bundle)
    if decision.backend:
        serve_env["PANCREAS_BACKEND"] = decision.backend
    if decision.precision:
        serve_env["PANCREAS_PRECISION"] = decision.precision
    return decision, serve_env


def _decide_and_build(opts: EngineOptions, acc: Accelerator) -> Decision:
    decision = decide(opts, acc)
    if decision.action != "build" or decision.engine_dir is None:
        return decision
    logger.info("engine needed: %s", decision.reason)
    try:
        build_tensorrt_engine(opts, acc, decision.engine_dir)
    except (subprocess.CalledProcessError, OSError) as exc:
        if opts.mode in ("require", "rebuild") or opts.backend == "tensorrt":
            raise RuntimeError(f"TensorRT engine build failed ({exc}); see the log above") from exc
        logger.error("TensorRT engine build failed (%s); serving %s as-is instead", exc, opts.bundle)
        return Decision("serve-as-is", opts.bundle, f"engine build failed: {exc}", notes=acc.notes)
    return _with(decision, reason=f"built: {decision.reason}")


# ---- commands ---------------------------------------------------------------------------------------
def healthcheck(env: Mapping[str, str], timeout: float = 4.0) -> int:
    """0 when ``/healthz`` answers 200 on the local port, else 1 (Docker HEALTHCHECK contract)."""
    url = f"http://127.0.0.1:{env.get('PANCREAS_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        logger.warning("healthcheck %s failed: %s", url, exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entrypoint", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "build-engine", "plan",
                                                                        "healthcheck"))
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="extra `pancreas serve` arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    if args.command == "healthcheck":
        return healthcheck(env)
    try:
        if args.command == "plan":
            print(decide(EngineOptions.from_env(env), probe_accelerator()).as_json())
            return 0
        decision, serve_env = prepare(env)
    except (ValueError, RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        logger.error("%s", exc)
        return 1
    if args.command == "build-engine":
        logger.info("build-engine done: %s (%s)", decision.action, decision.bundle)
        return 0
    cmd = [sys.executable, "-m", "pancreas", "serve", *args.serve_args]
    logger.info("exec %s (PANCREAS_BUNDLE=%s, PANCREAS_BACKEND=%s)", " ".join(cmd),
                serve_env["PANCREAS_BUNDLE"], serve_env.get("PANCREAS_BACKEND", "auto"))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, serve_env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
