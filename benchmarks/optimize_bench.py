"""The side-by-side optimize benchmark behind ``benchmarks/results/optimize.md``.

``python -m benchmarks.optimize_bench --bundle B --data PHANTOMS --workdir W`` optimizes ``B`` with each recipe
chain of :data:`CHAINS` through the same code path as ``pancreas optimize`` (one command per row), then
measures every variant in this one process with :func:`benchmarks.optimize_report.measure_variant` on the held-out
``validation/`` phantoms and writes the report. Without ``--bundle`` it first trains a small teacher on the
phantoms' ``train/`` split (``--teacher-steps``, label-only loss of :mod:`optimize.distill`), used when
no trained demo bundle exists yet; the report says which teacher it used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.optimize_report import VariantRow, measure_variant, paired_latency, write_report
from optimize.data import Case, list_cases, phantom_patches
from optimize.distill import DistillConfig, finetune
from optimize.options import OptimizeOptions
from optimize.recipes import optimize_bundle
from pancreas.bundle import Artifact, Bundle, BundleMetadata, NetworkConfig, provenance
from pancreas.network import build_network
from pancreas.testing import make_random_bundle, tiny_dataset_json, tiny_plans

logger = logging.getLogger(__name__)

#: (variant name, recipe chain or None for the input bundle, fine-tune steps of the patch loop or None for
#: nnU-Net's loop (:data:`NNUNET_FINETUNE`), [(backend, precision), ...])
CHAINS: list[tuple[str, str | None, int | None, list[tuple[str, str]]]] = [
    ("teacher", None, 0, [("torch", "fp32")]),
    ("onnx-int8", "onnx,int8", 0, [("onnxruntime", "fp32"), ("onnxruntime", "int8")]),
    ("compiled", "compile", 0, [("torch_export", "fp32")]),
    ("pruned-0.5", "prune:0.5,onnx", 1000, [("torch", "fp32"), ("onnxruntime", "fp32")]),
    ("pruned-0.3", "prune:0.3,onnx", 1000, [("torch", "fp32"), ("onnxruntime", "fp32")]),
    ("pruned-0.3-nnunet", "prune:0.3,onnx,int8", None,
     [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]),
    ("pruned-0.5-nnunet", "prune:0.5,onnx", None, [("torch", "fp32"), ("onnxruntime", "fp32")]),
    ("distill-convs1-nnunet", "distill:convs=1,onnx", None, [("torch", "fp32"), ("onnxruntime", "fp32")]),
    ("pruned-0.3-nnunet-100ep", "prune:0.3,onnx,int8", None,
     [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]),
    ("pruned-0.4-nnunet-100ep", "prune:0.4,onnx", None, [("torch", "fp32"), ("onnxruntime", "fp32")]),
]

#: fine-tuning through the training package (``pancreas optimize --finetune-dataset``): the demo's own
#: preprocessed nnU-Net dataset (``runs/demo/TRAIN_COMMAND``), 60 epochs x 25 iterations, 2 threads (the
#: ``-100ep`` variant: 100 epochs, lr 2e-3, T=1; the command each bundle records is what the report shows)
NNUNET_FINETUNE = ("--finetune-dataset 501 --finetune-workdir runs/demo/work --finetune-plans nnUNetPlansTiny "
                   "--epochs 60 --iters-per-epoch 25 --threads 2")

#: data sizes of the optimize runs (``pancreas optimize`` flags): INT8 calibration on 16 train cases × 2
#: patches, fine-tuning on 48 train cases × 8 patches (2/3 on foreground, 1/3 of those on lesions)
BUILD = {"calib_cases": 16, "calib_per_case": 2, "val_cases": 6, "train_cases": 48, "train_per_case": 8}


def build_command(bundle: Path, chain: str, data: Path, steps: int | None, out: Path) -> str:
    """The ``pancreas optimize`` command line that builds one variant (as recorded in the report)."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in BUILD.items())
    finetune = f"--steps {steps}" if steps is not None else NNUNET_FINETUNE
    return (f"OMP_NUM_THREADS=1 pancreas optimize {bundle} --recipe {chain} --data {data} {finetune} "
            f"{flags} --out {out}")


def held_out_cases(data: Path, per_subtype: int) -> list[Case]:
    """The first ``per_subtype`` cases of every subtype of ``data/validation`` (balanced held-out set)."""
    cases = list_cases(data, "validation")
    return [c for k in sorted({c.subtype for c in cases}) for c in [c for c in cases if c.subtype == k][:per_subtype]]


def train_teacher(out: Path, data: Path, *, patch: tuple[int, int, int], steps: int, seed: int = 0) -> Path:
    """Train a small multi-task net on phantom patches (label-only loss) and write it as a bundle."""
    plans = tiny_plans(patch_size=patch)
    scratch = make_random_bundle(out.parent / f".{out.name}-init", seed=seed, plans=plans)
    train = phantom_patches(scratch, data, split="train", max_cases=10_000, per_case=6, seed=seed)
    torch.manual_seed(seed)
    net = build_network(plans, NetworkConfig())
    finetune(net, None, train, config=DistillConfig(steps=steps, batch=2, lr=3e-3, seed=seed))
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "models" / "fold_0.pt")
    meta = BundleMetadata(name="phantom-teacher", description=f"small teacher trained {steps} steps on phantoms "
                          "by benchmarks.optimize_bench.train_teacher", artifacts=[Artifact(kind="torch",
                          path="models/fold_0.pt", fold=0, patch_size=list(patch))],
                          provenance=provenance(f"benchmarks.optimize_bench.train_teacher(steps={steps})"))
    Bundle.write(out, meta, plans, tiny_dataset_json(len(list_cases(data, "train"))))
    return out


def run(bundle: Path, data: Path, workdir: Path, *, threads: int, per_subtype: int, report: Path,
        teacher_note: str, only: list[str] | None = None) -> list[VariantRow]:
    torch.set_num_threads(threads)  # also bounds the engine's torch pre/postprocessing
    cases = held_out_cases(data, per_subtype)
    load0 = os.getloadavg()[0]
    rows: list[VariantRow] = []
    for name, chain, steps, measures in CHAINS:
        if only and name not in only:
            continue
        target = bundle
        command = f"(input bundle) {bundle}"
        if chain is not None:
            target = workdir / name
            command = build_command(bundle, chain, data, steps, target)
            if not (target / "configs" / "metadata.json").is_file() and steps is None:
                logger.warning("%s is not built: build it with `%s` (nnU-Net fine-tune), then re-run", name, command)
                continue
            if not (target / "configs" / "metadata.json").is_file():
                t0 = time.perf_counter()
                options = OptimizeOptions(data=data, command=command, finetune=DistillConfig(steps=steps), **BUILD)
                optimize_bundle(bundle, chain, target, options=options)
                logger.info("%s built in %.0f s", name, time.perf_counter() - t0)
            command = built_with(target) or command
        for backend, precision in measures:
            rows.append(measure_variant(target, name=name, command=command, backend=backend, precision=precision,
                                        cases=cases, threads=threads))
            logger.info("measured %s", rows[-1])
    rows = _merge(report, rows) if only else rows
    write_report(rows, report, title="Optimization results (CPU, this machine)",
                 preamble=_preamble(teacher_note, threads, len(cases), load0), notes=done_when_notes(rows, workdir, report))
    return rows


def _merge(report: Path, rows: list[VariantRow]) -> list[VariantRow]:
    """The rows already in ``<report>.json``, with the newly measured ones replacing or following them."""
    path = report.with_suffix(".json")
    old = [VariantRow(**r) for r in json.loads(path.read_text())] if path.is_file() else []
    key = lambda r: (r.name, r.backend, r.precision)
    new = {key(r): r for r in rows}
    return [new.pop(key(r), r) for r in old] + list(new.values())


def _preamble(teacher_note: str, threads: int, n_cases: int, load0: float) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    v = provenance("").versions
    return (f"{teacher_note}\n\nMeasured side by side in one process (`python -m benchmarks.optimize_bench`), {cpu}, "
            f"{threads} thread(s) per backend (load average {load0:.1f} at "
            f"the start, {os.getloadavg()[0]:.1f} at the end: absolute times are noisy, ratios within a run are "
            f"what to read). Accuracy: mean over {n_cases} held-out phantom cases (`validation/`) through the full "
            f"engine (preprocess, sliding window step 0.5, postprocess); per-case latency is the median of "
            f"`Engine.predict`; per-patch latency is one batch-1 patch on the backend. GFLOPs = 2 × MACs of "
            f"conv/transposed-conv/linear layers. Versions: torch {v.get('torch')}, onnxruntime "
            f"{v.get('onnxruntime')}, torch-pruning {v.get('torch-pruning')}. No GPU and no TensorRT here: the "
            f"GPU column is empty.")


def _stage_records(workdir: Path) -> str:
    """Every optimize stage's own record (from the bundles' metadata): parity, patch accuracy, patch latency."""
    lines = ["## Stage records (`configs/metadata.json` → `optimization` of each built bundle)", "",
             ("| bundle | stage | built | reference | voxel agreement | Δ whole DSC | Δ lesion DSC | Δ subtype acc | "
             "ms/patch before → after | details |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for name, chain, _, _ in CHAINS:
        meta_file = workdir / name / "configs" / "metadata.json"
        if chain is None or not meta_file.is_file():
            continue
        for r in json.loads(meta_file.read_text())["optimization"]:
            d, lat, par = r["accuracy"]["delta"], r["latency_ms_per_patch"], r.get("parity") or {}
            extra = r.get("structure") or {k: r[k] for k in ("chosen_method", "calibration") if k in r}
            agreement = f"{par['agreement']:.4f}" if par else "–"
            lines.append(f"| {name} | {r['recipe']} | {r['precision']} | {r['reference']} | {agreement} | "
                         f"{d['whole_dsc']:+.4f} | {d['lesion_dsc']:+.4f} | {d['subtype_acc']:+.3f} | "
                         f"{lat['before']:.0f} → {lat['after']:.0f} | `{json.dumps(extra)[:300]}` |")
    lines += ["", ("Stage records are patch-level (held-out phantom patches, batch-1 patch timing) and are "
              "written by `pancreas optimize` itself; the table above is per case through the full engine.")]
    return "\n".join(lines)


_NOT_RUN = """## What could not be run here

* **TensorRT**: this machine has neither a GPU nor the `tensorrt` package. `pancreas/backends/tensorrt_build.py` and
  `pancreas/backends/tensorrt_backend.py` follow the TensorRT 10 Python API (ONNX parser, FP16/INT8 flags,
  batch 1..N profile, timing cache, engine + metadata JSON, rebuild on GPU/version mismatch); their tests
  (`tests/optimize/test_tensorrt.py`) skip here with that reason. No GPU latency was measured.
* **fp16** is a GPU recipe: the fp16 ONNX model is built and parity-checked, and its CPU per-patch latency
  is in the stage records (slower than fp32 on this CPU, as expected); it is not in the per-case table.
* **AOTInductor** (`compile:aoti`) needs minutes of C++ compilation on these 2 shared cores and was not
  timed; the `torch.export` program (`compile`) is parity-gated and measured above (`compiled` row, served by
  the `torch_export` backend). GPU latencies of the compiled paths need a GPU."""


def _student_line(name: str, backend: str, teacher: VariantRow, student: VariantRow) -> str:
    return (f"* {name} vs teacher ({backend} fp32) per case: {teacher.ms_per_case / student.ms_per_case:.2f}× "
            f"({teacher.ms_per_case:.0f} → {student.ms_per_case:.0f} ms; sliding window alone "
            f"{_ratio(teacher.ms_network_per_case, student.ms_network_per_case)}), whole DSC "
            f"{student.whole_dsc - teacher.whole_dsc:+.4f}, lesion DSC {student.lesion_dsc - teacher.lesion_dsc:+.4f}.")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def done_when_notes(rows: list[VariantRow], workdir: Path | None = None, report: Path | None = None) -> str:
    def find(name: str, backend: str, precision: str) -> VariantRow | None:
        return next((r for r in rows if (r.name, r.backend, r.precision) == (name, backend, precision)), None)

    lines = ["## Done-when checks (computed from the rows above)", ""]
    fp32, int8 = find("onnx-int8", "onnxruntime", "fp32"), find("onnx-int8", "onnxruntime", "int8")
    if fp32 and int8:
        lines.append(f"* INT8 vs FP32 onnxruntime per case: {fp32.ms_per_case / int8.ms_per_case:.2f}× "
                     f"({fp32.ms_per_case:.0f} → {int8.ms_per_case:.0f} ms; sliding window alone "
                     f"{_ratio(fp32.ms_network_per_case, int8.ms_network_per_case)}, per patch "
                     f"{fp32.ms_per_patch / int8.ms_per_patch:.2f}×), whole DSC "
                     f"{int8.whole_dsc - fp32.whole_dsc:+.4f}, lesion DSC {int8.lesion_dsc - fp32.lesion_dsc:+.4f}.")
    for backend, teacher in (("torch", find("teacher", "torch", "fp32")),
                             ("onnxruntime", find("onnx-int8", "onnxruntime", "fp32"))):
        for name in [c[0] for c in CHAINS if c[1] and c[1].split(",")[0].split(":")[0] in ("prune", "distill")]:
            student = find(name, backend, "fp32")
            if teacher and student:
                lines.append(_student_line(name, backend, teacher, student))
    lines += _pairs_notes(report)
    if workdir is not None:
        lines += ["", _stage_records(workdir)]
    return "\n".join([*lines, "", _NOT_RUN])


#: (name, A, B): A/B per-case speedups measured alternately, A = reference (bundle variant, backend, precision)
PAIRS = [("INT8 vs FP32 onnxruntime", ("onnx-int8", "onnxruntime", "fp32"), ("onnx-int8", "onnxruntime", "int8")),
         ("torch.export program vs eager torch", ("teacher", "torch", "fp32"), ("compiled", "torch_export", "fp32")),
         ("pruned-0.5 vs teacher, onnxruntime", ("onnx-int8", "onnxruntime", "fp32"),
          ("pruned-0.5", "onnxruntime", "fp32")),
         ("pruned-0.5 vs teacher, torch", ("teacher", "torch", "fp32"), ("pruned-0.5", "torch", "fp32")),
         ("pruned-0.3 vs teacher, onnxruntime", ("onnx-int8", "onnxruntime", "fp32"),
          ("pruned-0.3", "onnxruntime", "fp32")),
         ("pruned-0.3 vs teacher, torch", ("teacher", "torch", "fp32"), ("pruned-0.3", "torch", "fp32")),
         *[(f"{v} vs teacher, {b}", ("teacher", "torch", "fp32") if b == "torch" else ("onnx-int8", b, "fp32"),
            (v, b, "fp32")) for v in ("pruned-0.3-nnunet", "pruned-0.3-nnunet-100ep", "pruned-0.4-nnunet-100ep",
                                     "pruned-0.5-nnunet", "distill-convs1-nnunet") for b in ("onnxruntime", "torch")],
         *[(f"{v} INT8 onnxruntime vs teacher {b} FP32", ("teacher", "torch", "fp32") if b == "torch" else
            ("onnx-int8", b, "fp32"), (v, "onnxruntime", "int8"))
           for v in ("pruned-0.3-nnunet", "pruned-0.3-nnunet-100ep") for b in ("onnxruntime", "torch")]]


def run_pairs(data: Path, workdir: Path, report: Path, *, threads: int, per_subtype: int,
              only: list[str] | None = None, teacher: Path | None = None) -> list[dict]:
    """Alternating A/B per-case timings for :data:`PAIRS`, saved next to the report (``.pairs.json``)."""
    torch.set_num_threads(threads)
    cases = held_out_cases(data, per_subtype)
    folder = {"teacher": teacher} if teacher is not None else {}
    results = []
    for name, (va, ba, pa), (vb, bb, pb) in PAIRS:
        if only and name not in only:
            continue
        da, db = folder.get(va, workdir / va), folder.get(vb, workdir / vb)
        if da.is_dir() and db.is_dir():
            res = paired_latency((da, ba, pa), (db, bb, pb), cases, threads=threads)
            results.append({"name": name, **res})
            logger.info("pair %s: %s", name, results[-1])
    path = report.with_suffix(".pairs.json")
    previous = [r for r in json.loads(path.read_text()) if r["name"] not in {r["name"] for r in results}] \
        if path.is_file() else []
    path.write_text(json.dumps(previous + results, indent=2))
    return results


def _pairs_notes(report: Path | None) -> list[str]:
    path = report.with_suffix(".pairs.json") if report is not None else None
    if path is None or not path.is_file():
        return []
    lines = ["", "### Paired per-case timings (A and B alternate on every case: robust to load drift)", "",
             ("| comparison | cases | A ms/case | B ms/case | speedup per case (median of A/B) | "
             "speedup of the sliding window alone |"), "|---|---|---|---|---|---|"]
    for r in json.loads(path.read_text()):
        lines.append(f"| {r['name']} | {r['cases']} | {r['ms_per_case'][0]:.0f} | {r['ms_per_case'][1]:.0f} | "
                     f"{r['speedup_per_case']:.2f}× | {r['speedup_sliding_window']:.2f}× |")
    return lines


def built_with(bundle: Path) -> str | None:
    """The command recorded in a built bundle's provenance (what really made it).

    Patch-loop builds ran under ``OMP_NUM_THREADS=1`` (not part of argv, so added here); nnU-Net-loop
    builds set their threads with ``--threads``.
    """
    meta = bundle / "configs" / "metadata.json"
    command = json.loads(meta.read_text())["provenance"].get("command") if meta.is_file() else None
    if not command:
        return None
    return command if "--finetune-dataset" in command else f"OMP_NUM_THREADS=1 {command}"


def render_only(report: Path, workdir: Path, note: str) -> int:
    """Rebuild the markdown from the measured rows (``<report>.json``), the paired timings and the stage
    records, keeping the measured run's preamble and adding ``note`` after it."""
    rows = [replace(VariantRow(**r), command=built_with(workdir / r["name"]) or r["command"])
            for r in json.loads(report.with_suffix(".json").read_text())]
    old = report.read_text().split("\n\n| variant |")[0].split("\n\n", 1) if report.is_file() else ["", ""]
    kept = old[-1].strip() if len(old) > 1 else ""
    preamble = "\n\n".join(p for p in (kept, "" if note.strip() in kept else note.strip()) if p)
    write_report(rows, report, title="Optimization results (CPU, this machine)", preamble=preamble,
                 notes=done_when_notes(rows, workdir, report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--report", type=Path, default=Path("benchmarks/results/optimize.md"))
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--patch", type=int, nargs=3, default=(40, 48, 80))
    parser.add_argument("--only", nargs="*", default=None, help="variant names of CHAINS to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="threads per backend (and for torch pre/post)")
    parser.add_argument("--per-subtype", type=int, default=4, help="held-out validation cases per subtype")
    parser.add_argument("--render-only", action="store_true", help="re-render the report from its JSON twin")
    parser.add_argument("--pairs", action="store_true", help="only the alternating A/B per-case timings (PAIRS)")
    parser.add_argument("--note", default="", help="extra preamble text (render-only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.pairs:
        run_pairs(args.data, args.workdir, args.report, threads=args.threads, per_subtype=args.per_subtype,
                  only=args.only, teacher=args.bundle)
        return 0
    if args.render_only:
        return render_only(args.report, args.workdir, args.note)
    bundle = args.bundle
    note = f"Teacher: `{bundle}`." if bundle else ""
    if bundle is None:
        bundle = args.workdir / "teacher"
        if not (bundle / "configs" / "metadata.json").is_file():
            train_teacher(bundle, args.data, patch=tuple(args.patch), steps=args.teacher_steps)
        note = (f"Teacher: no trained demo bundle existed when this ran, so a small teacher was trained on the "
                f"phantoms ({args.teacher_steps} steps, `benchmarks.optimize_bench.train_teacher`).")
    run(bundle, args.data, args.workdir, threads=args.threads, per_subtype=args.per_subtype, report=args.report,
        teacher_note=note, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
