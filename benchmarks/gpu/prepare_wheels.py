"""Prepare the wheels a GPU run needs (``.whl/``) and split them into carries of at most 64 MiB per call.

The GPU image has torch 2.11 on Python 3.12, scipy, matplotlib, psutil, tqdm, httpx and more, but not
nnunetv2, SimpleITK, nibabel, blosc2, pydantic and their kin. This script

1. finds the distributions the benchmark imports (a probe imports its modules in this venv and maps
   them to distributions), minus the standard library, this project and what the image already has
   (:data:`IMAGE_HAS`, from the device notes' package list), at this venv's versions;
2. downloads cp312 manylinux x86_64 (or pure-Python) wheels of exactly those versions into
   ``.whl/wheels/`` (``pip download --no-deps``); a source-only distribution (acvl-utils) is built into a
   pure-Python wheel with ``pip wheel`` (refused if the build is not ``py3-none-any``);
3. repacks the wheels uncompressed (``ZIP_STORED``, same files, same RECORD) into one ``tar.xz``: xz
   compresses the binaries far better than the wheels' own deflate (SimpleITK alone is 52.8 MB);
4. measures the working tree that travels with every call (tracked and untracked-not-ignored files) and
   splits the archive into parts ``.whl/carry-N/`` that fit beside it in 64 MiB, one part per call;
5. prints the device calls. ``benchmarks/gpu/unpack.sh`` (run by ``run.sh``) stashes each call's part in
   ``/tmp`` and installs everything once all parts are there.

    .venv/bin/python benchmarks/gpu/prepare_wheels.py            # download, pack, split, print the calls
    .venv/bin/python benchmarks/gpu/prepare_wheels.py --offline  # use .whl/wheels as it is (no network)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20
#: what one device call may carry in all (working tree + carried paths)
CALL_LIMIT = 64 * MIB
#: kept free under the limit (files that change between now and the call)
MARGIN = 2 * MIB
PART_NAME = "wheels.tar.xz.part"
#: the modules a GPU benchmark run imports (the suite, both runners, every backend it may use)
PROBE_MODULES = (
    "benchmarks.gpu.suite", "benchmarks.candidate_worker", "benchmarks.candidates", "benchmarks.nnunet_baseline",
    "benchmarks.plots", "pancreas.engine", "pancreas.testing", "pancreas.backends.torch_backend",
    "pancreas.backends.onnxruntime_backend", "nnunetv2.inference.predict_from_raw_data",
    "nnunetv2.inference.export_prediction", "nnunetv2.preprocessing.preprocessors.default_preprocessor",
    "nnunetv2.imageio.simpleitk_reader_writer",
)
#: imported by something above only if present (try/except): not carried
OPTIONAL = frozenset({"imagecodecs", "brotli", "brotlicffi"})
#: Python packages in the GPU image ('cuda', as read 2026-11-17; /work/.library/device/KINDS.md)
IMAGE_HAS = frozenset(["absl-py", "accelerate", "aiofiles", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio", "attrs", "botorch", "build", "certifi", "charset-normalizer", "chex", "click", "cloudpickle", "cmake", "colorama", "contourpy", "coverage", "cuda-bindings", "cuda-core", "cuda-pathfinder", "cuda-toolkit", "cupy-cuda13x", "cycler", "cython", "diffrax", "e3nn", "einops", "equinox", "etils", "execnet", "filelock", "flatbuffers", "flax", "fonttools", "formulaic", "frozenlist", "fsspec", "gpytorch", "grpcio", "h11", "h5py", "hf-xet", "httpcore", "httpx", "huggingface-hub", "humanize", "hypothesis", "idna", "imageio", "iniconfig", "interface-meta", "jax", "jax-cuda13-pjrt", "jax-cuda13-plugin", "jaxlib", "jaxtyping", "jinja2", "joblib", "kiwisolver", "lazy-loader", "lightning", "lightning-utilities", "linear-operator", "lineax", "llvmlite", "lxml", "markdown", "markdown-it-py", "markupsafe", "matplotlib", "mdurl", "meson", "ml-dtypes", "mpi4py", "mpmath", "msgpack", "multidict", "multipledispatch", "mypy-extensions", "nanobind", "narwhals", "networkx", "ninja", "numba", "numba-cuda", "numpy", "numpyro", "nvidia-ml-py", "onnx", "onnx-ir", "onnxruntime", "onnxscript", "opencv-python-headless", "optax", "opt-einsum", "opt-einsum-fx", "optimistix", "orbax-checkpoint", "packaging", "pandas", "pathspec", "patsy", "peft", "pillow", "pip", "pluggy", "portalocker", "prometheus-client", "propcache", "protobuf", "psutil", "pyarrow", "pybind11", "py-cpuinfo", "pygments", "pyparsing", "pyproject-hooks", "pyre-extensions", "pytest", "pytest-benchmark", "pytest-cov", "pytest-mock", "pytest-timeout", "pytest-xdist", "python-dateutil", "pytorch-lightning", "pyyaml", "regex", "requests", "rich", "sacrebleu", "safetensors", "scikit-build-core", "scikit-image", "scikit-learn", "scipy", "seaborn", "sentencepiece", "sentence-transformers", "setuptools", "shellingham", "simplejson", "six", "sortedcontainers", "statsmodels", "sympy", "tabulate", "tensorboard", "tensorboard-data-server", "tensorstore", "threadpoolctl", "tifffile", "tiktoken", "timm", "tokenizers", "toolz", "torch", "torchaudio", "torchdiffeq", "torch-geometric", "torchmetrics", "torchvision", "tqdm", "transformers", "treescope", "triton", "typer", "typing-extensions", "typing-inspect", "urllib3", "uvloop", "wadler-lindig", "werkzeug", "wheel", "wrapt", "xarray", "xxhash", "yarl", "zipp"])
PIP_TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
              "--abi", "abi3", "--abi", "none", *[a for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
              "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
              for a in ("--platform", n)]]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_PROBE = """
import importlib, importlib.metadata as md, json, sys
for m in sys.argv[1:]:
    importlib.import_module(m)
tops = {n.split(".")[0] for n in sys.modules} - set(sys.stdlib_module_names)
owners = md.packages_distributions()
print(json.dumps({"torchvision": "torchvision" in sys.modules,
                  "dists": {d: md.version(d) for t in tops for d in owners.get(t, [])}}))
"""


def needed(python: str = sys.executable) -> dict[str, str]:
    """``{distribution: version}`` the benchmark imports here that the GPU image lacks."""
    proc = subprocess.run([python, "-c", _PROBE, *PROBE_MODULES], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    if probe["torchvision"]:
        raise RuntimeError("the benchmark's modules import torchvision; keep it off every code path")
    skip = IMAGE_HAS | OPTIONAL | {"pancreas-mtl"}
    return {canonical(d): v for d, v in sorted(probe["dists"].items()) if canonical(d) not in skip}


def _have(wheels: Path, name: str, version: str) -> Path | None:
    """The wheel of ``name==version`` in ``wheels`` (file names are ``<name>-<version>-<tags>.whl``)."""
    return next((w for w in sorted(wheels.glob("*.whl"))
                 if canonical(w.name.split("-")[0]) == canonical(name) and w.name.split("-")[1] == version), None)


def fetch(dists: dict[str, str], wheels: Path, *, offline: bool = False) -> list[str]:
    """Download (or build) a wheel of each distribution into ``wheels``; return those still missing."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = []
    for name, version in dists.items():
        if _have(wheels, name, version) or offline:
            if not _have(wheels, name, version):
                missing.append(f"{name}=={version}")
            continue
        spec = f"{name}=={version}"
        pip = [sys.executable, "-m", "pip"]
        got = subprocess.run([*pip, "download", "-q", "--no-deps", *PIP_TARGET, "-d", str(wheels), spec],
                             check=False, capture_output=True, text=True)
        if got.returncode != 0:
            logger.info("%s: no cp312 wheel (%s); building a pure-Python wheel", spec,
                        got.stderr.strip().splitlines()[-1] if got.stderr.strip() else "pip failed")
            got = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-binary", name, "-w", str(wheels), spec],
                                 check=False, capture_output=True, text=True)
        built = _have(wheels, name, version)
        if got.returncode != 0 or built is None:
            missing.append(spec)
            logger.warning("%s: could not get a wheel: %s", spec, got.stderr.strip()[-300:])
        elif not (built.name.endswith("-none-any.whl") or "cp312" in built.name or "abi3" in built.name):
            built.unlink()
            missing.append(spec)
            logger.warning("%s: the wheel built here (%s) is not pure Python; get a cp312 wheel", spec, built.name)
    return missing


def tree_bytes(root: Path = ROOT) -> int:
    """Size of what every device call sends: tracked and untracked-not-ignored files (and shared/)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    files = {root / f for f in out.decode().split("\0") if f}
    shared = root / "shared"
    if shared.is_dir():
        files |= {p for p in shared.rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def pack(wheels: list[Path], archive: Path, *, preset: int = 6) -> Path:
    """``tar.xz`` of the wheels, each rewritten uncompressed (the same files and RECORD; still valid wheels)."""
    with tempfile.TemporaryDirectory() as tmp, lzma.open(archive, "wb", preset=preset) as xz, \
            tarfile.open(fileobj=xz, mode="w") as tar:
        for wheel in sorted(wheels):
            stored = Path(tmp) / wheel.name
            with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
                for info in src.infolist():
                    data = src.read(info)  # before the copy's compression type changes
                    copy = zipfile.ZipInfo(info.filename, info.date_time)
                    copy.external_attr, copy.compress_type = info.external_attr, zipfile.ZIP_STORED
                    dst.writestr(copy, data)
            tar.add(stored, arcname=wheel.name)
            stored.unlink()
    return archive


def split(archive: Path, dest: Path, part_bytes: int, manifest: dict) -> list[Path]:
    """Cut ``archive`` into ``dest/carry-N/<PART_NAME>N`` of at most ``part_bytes``, each with the manifest."""
    if part_bytes <= 0:
        raise ValueError(f"no room for wheels: the working tree alone is over the {CALL_LIMIT // MIB} MiB limit")
    for old in dest.glob("carry-*"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    parts: list[Path] = []
    with open(archive, "rb") as f:
        while block := f.read(part_bytes):
            folder = dest / f"carry-{len(parts) + 1}"
            folder.mkdir(parents=True)
            part = folder / f"{PART_NAME}{len(parts) + 1}"
            part.write_bytes(block)
            parts.append(part)
    full = {**manifest, "parts": len(parts), "archive_sha256": sha256(archive),
            "part_sha256": {p.name: sha256(p) for p in parts}}
    for p in parts:
        (p.parent / "manifest.json").write_text(json.dumps(full, indent=1))
    return parts


def device_calls(parts: list[Path], root: Path = ROOT) -> list[dict]:
    """The ``run`` calls, in order: each carries one part; the last one also runs the benchmark."""
    calls = []
    for i, part in enumerate(parts, 1):
        carry = str(part.parent.relative_to(root))
        last = i == len(parts)
        cmd = ("PYTHONUNBUFFERED=1 BENCH_RESULTS=$OUT bash benchmarks/gpu/run.sh" if last
               else "bash benchmarks/gpu/unpack.sh; test $? -eq 10")
        calls.append({"carry": [carry], "command": cmd, "timeout_s": 540 if last else 120})
    return calls


def prepare(dest: Path, *, offline: bool = False, limit: int = CALL_LIMIT) -> dict:
    """Steps 1-5 of the module docstring; returns the manifest (with the device calls)."""
    dists = needed()
    logger.info("to carry (%d): %s", len(dists), ", ".join(f"{k}=={v}" for k, v in dists.items()))
    missing = fetch(dists, dest / "wheels", offline=offline)
    wheels = [w for name, v in dists.items() if (w := _have(dest / "wheels", name, v))]
    if missing:
        logger.error("MISSING wheels (the GPU run would stop at run.sh's import check): %s", ", ".join(missing))
    tree = tree_bytes()
    budget = limit - tree - MARGIN
    digest = {w.name: sha256(w) for w in wheels}
    archive = dest / "wheels.tar.xz"
    stamp = dest / "wheels.tar.xz.json"
    if not (archive.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == digest):
        logger.info("packing %d wheels (%.1f MiB) with xz; this takes minutes on a small CPU",
                    len(wheels), sum(w.stat().st_size for w in wheels) / MIB)
        pack(wheels, archive)
        stamp.write_text(json.dumps(digest))
    manifest = {"wheels": digest, "missing": missing, "wheel_bytes": sum(w.stat().st_size for w in wheels),
                "archive_bytes": archive.stat().st_size, "tree_bytes": tree, "budget_bytes": budget}
    parts = split(archive, dest, budget, manifest)
    manifest["calls"] = device_calls(parts)
    (dest / "calls.json").write_text(json.dumps(manifest["calls"], indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=ROOT / ".whl")
    p.add_argument("--offline", action="store_true", help="no downloads: pack what .whl/wheels holds")
    p.add_argument("--limit-mib", type=float, default=CALL_LIMIT / MIB, help="per-call limit (default 64)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    m = prepare(args.dest, offline=args.offline, limit=int(args.limit_mib * MIB))
    logger.info("wheels %.1f MiB -> archive %.1f MiB; working tree %.1f MiB; room per call %.1f MiB -> %d call(s)",
                m["wheel_bytes"] / MIB, m["archive_bytes"] / MIB, m["tree_bytes"] / MIB, m["budget_bytes"] / MIB,
                len(m["calls"]))
    for i, call in enumerate(m["calls"], 1):
        logger.info("device call %d: run(carry=%s, command=%r, timeout_s=%d)", i, json.dumps(call["carry"]),
                    call["command"], call["timeout_s"])
    return 1 if m["missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
