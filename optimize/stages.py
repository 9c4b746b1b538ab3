"""The stage functions behind :data:`optimize.recipes.RECIPES`; each takes ``(state, recipe)``.

A stage builds its artifact, gates it (parity against its reference at the stated tolerance of
:data:`optimize.validate.TOLERANCES`), registers the artifact on the state and records its measurements.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from optimize.compile import aoti_package, compile_device, export_program, load_program
from optimize.distill import StudentSpec, build_student, finetune, finetune_nnunet
from optimize.export_onnx import export_onnx, onnx_info
from optimize.fp16 import convert_fp16
from optimize.options import CompileConfig
from optimize.prune import PruneConfig, count_macs, count_parameters, prune_network
from optimize.quantize import quantize_int8, tensorrt_int8
from optimize.runners import ort_runner, torch_runner
from optimize.state import Recipe, RecipeError, State
from optimize.validate import TOLERANCES, check_parity, parity_gate
from pancreas.backends.tensorrt_backend import TensorRTBackend
from pancreas.backends.tensorrt_build import build_engine, current_target
from pancreas.bundle import Artifact

logger = logging.getLogger(__name__)


def _gate_onnx(state: State, recipe: Recipe, precision: str, rel: str, *, reference: Any, reference_name: str,
               images: Any, t0: float, info: dict[str, Any] | None = None, key: str | None = None,
               **details: Any) -> None:
    """Parity-gate the ONNX model ``state.out/rel`` against ``reference``, register it (``state.onnx[key]``,
    ``key`` defaulting to the precision) and record the stage."""
    path = state.out / rel
    candidate = ort_runner(path)
    report = parity_gate(reference, candidate, images, what=str(path), tolerance=TOLERANCES[precision])
    state.onnx[key or precision] = path
    state.add(Artifact(kind="onnx", path=rel, precision=precision, fold=state.source.fold, patch_size=state.patch,
                       info={**onnx_info(path), **(info or {})}))
    state.record(recipe, precision, rel, reference=reference, candidate=candidate, reference_name=reference_name,
                 seconds=time.perf_counter() - t0, parity=report, **details)


def onnx(state: State, recipe: Recipe) -> None:
    """fp32 ONNX export (fixed patch, dynamic batch, onnxslim) + strict parity gate against torch."""
    t0 = time.perf_counter()
    rel = "models/model.onnx"
    export_onnx(state.net, state.patch, state.out / rel, config=state.options.onnx)
    _gate_onnx(state, recipe, "fp32", rel, reference=torch_runner(state.net), reference_name="torch fp32",
               images=state.patches("val").images[:state.options.parity_patches], t0=t0)


def _need_onnx(state: State) -> None:
    if "fp32" not in state.onnx:
        onnx(state, Recipe("onnx"))


def fp16(state: State, recipe: Recipe) -> None:
    """ONNX float16 (float32 I/O); gated against the fp32 ONNX at the fp16 tolerance."""
    _need_onnx(state)
    t0 = time.perf_counter()
    rel = "models/model_fp16.onnx"
    convert_fp16(state.onnx["fp32"], state.out / rel, config=state.options.fp16)
    _gate_onnx(state, recipe, "fp16", rel, reference=ort_runner(state.onnx["fp32"]), reference_name="onnxruntime fp32",
               images=state.patches("val").images[:state.options.parity_patches], t0=t0,
               note="fp16 is a GPU recipe: onnxruntime on CPU runs fp16 convolutions slower than fp32")


def bf16(state: State, recipe: Recipe) -> None:
    """The torch weights under bf16 autocast (no new artifact: the torch backend casts at run time), gated
    against torch fp32 at the bf16 tolerance. Faster than fp32 only where bf16 is native (CPUs with AVX512-BF16
    or AMX, GPUs); :func:`optimize.recipes._recommended` serves it only when it measured faster here."""
    t0 = time.perf_counter()
    weights = state.torch_weights
    reference, candidate = torch_runner(state.net), torch_runner(state.net, "bf16")
    report = parity_gate(reference, candidate, state.patches("val").images[:state.options.parity_patches],
                         what=f"{weights} under bf16 autocast", tolerance=TOLERANCES["bf16"])
    state.record(recipe, "bf16", weights, reference=reference, candidate=candidate, reference_name="torch fp32",
                 seconds=time.perf_counter() - t0, parity=report,
                 note="runtime autocast of the fp32 weights; native bf16 CPUs and GPUs only")


def int8(state: State, recipe: Recipe, *, target: str = "onnxruntime") -> None:
    """Static QDQ per-channel INT8 calibrated on real phantom patches; gated at the int8 tolerance.

    ``target="tensorrt"`` writes the symmetric signed INT8 model TensorRT parses (``models/model_int8_trt.onnx``,
    ``state.onnx["int8_trt"]``, artifact ``info.target``); the ``tensorrt:int8`` recipe builds from it.
    """
    _need_onnx(state)
    t0 = time.perf_counter()
    config = state.options.int8
    if recipe.arg and recipe.name == "int8":  # int8:minmax / int8:entropy / int8:percentile pins the method
        config = replace(config, methods=(recipe.arg,))
    trt = target == "tensorrt"
    config = tensorrt_int8(config) if trt else config
    rel, calib_dir = ("models/model_int8_trt.onnx", "calibration_trt") if trt else ("models/model_int8.onnx",
                                                                                      "calibration")
    calib, val = state.patches("calib"), state.patches("val")
    result = quantize_int8(state.onnx["fp32"], state.out / rel, calib.images, val.images, config=config,
                           cache_dir=state.out / calib_dir)
    info = {"calibration_method": result.method, "calibration_cache": str(result.cache.relative_to(state.out)),
            "calibration_patches": len(calib), "kept_float_nodes": len(result.excluded_nodes),
            "target": config.target}
    _gate_onnx(state, recipe, "int8", rel, reference=ort_runner(state.onnx["fp32"]), reference_name="onnxruntime fp32",
               images=val.images, t0=t0, info=info, key="int8_trt" if trt else "int8",
               calibration={m: {"agreement": p["agreement"], "cls_max_abs_diff": p["cls_max_abs_diff"]}
                            for m, p in result.parity.items()}, chosen_method=result.method,
               int8_config=asdict(config))


def _finetune(state: State, student: Any, config: Any, tag: str) -> tuple[Any, dict[str, Any]]:
    """Distillation fine-tune of ``student`` (teacher: the current network); nnU-Net's loop when configured."""
    kd = state.options.finetune
    tag = f"{state.out.name}_{tag}"  # one nnU-Net output folder per optimized bundle and stage
    if state.options.nnunet is not None:
        return finetune_nnunet(student, state.net, state.bundle.plans, config, nnunet=state.options.nnunet,
                               distill_config=kd, tag=tag)
    losses = finetune(student, state.net, state.patches("train"), config=kd)
    return student, {"engine": "patches", "steps": len(losses), "loss_first": round(losses[0], 4),
                     "loss_last": round(losses[-1], 4), **asdict(kd)}


def prune(state: State, recipe: Recipe) -> None:
    """Structured channel pruning (torch-pruning) + distillation fine-tune with the unpruned net as teacher."""
    try:
        ratio = float(recipe.arg) if recipe.arg else 0.3
    except ValueError as exc:
        raise RecipeError(f"prune ratio {recipe.arg!r} is not a number; use e.g. prune:0.3") from exc
    t0 = time.perf_counter()
    result = prune_network(state.net, state.bundle.plans, state.config, state.patch,
                           prune_config=PruneConfig(ratio=ratio))
    net, summary = _finetune(state, result.net, result.config, f"prune_{ratio}")
    reference = torch_runner(state.net)
    state.net, state.config = net, result.config
    state.record(recipe, "fp32", None, reference=reference, candidate=torch_runner(net),
                 reference_name="torch fp32 (unpruned teacher)", seconds=time.perf_counter() - t0,
                 structure=result.to_dict(), finetune=summary)


def distill(state: State, recipe: Recipe) -> None:
    """Distil the current network into a narrower/shallower student (distill:width=0.5:convs=1)."""
    spec = StudentSpec.parse(recipe.arg)
    t0 = time.perf_counter()
    student, config = build_student(state.net, state.bundle.plans, state.config, spec, state.patch)
    student, summary = _finetune(state, student, config, f"distill_{recipe.arg or 'default'}")
    example = torch.zeros(1, state.config.input_channels, *state.patch)
    structure = {"params_before": count_parameters(state.net), "params_after": count_parameters(student),
                 "gmacs_before": round(count_macs(state.net, example) / 1e9, 3),
                 "gmacs_after": round(count_macs(student, example) / 1e9, 3), "student": asdict(spec),
                 "arch_kwargs_override": config.arch_kwargs_override}
    reference = torch_runner(state.net)
    state.net, state.config = student, config
    state.record(recipe, "fp32", None, reference=reference, candidate=torch_runner(student),
                 reference_name="torch fp32 (teacher)", seconds=time.perf_counter() - t0, structure=structure,
                 finetune=summary)


def tensorrt(state: State, recipe: Recipe) -> None:
    """TensorRT engine from the ONNX model (int8 QDQ if built, else fp16; ``tensorrt:fp32`` forces fp32)."""
    current_target()  # no TensorRT or no GPU: fail before anything is written
    _need_onnx(state)
    precision = recipe.arg or ("int8" if "int8" in state.onnx else "fp16")
    if precision == "int8" and "int8_trt" not in state.onnx:  # TensorRT parses only symmetric signed INT8
        int8(state, recipe, target="tensorrt")
    source = state.onnx["int8_trt"] if precision == "int8" else state.onnx["fp32"]
    build = replace(state.options.trt, precision=precision)
    t0 = time.perf_counter()
    rel = f"models/model_{precision}.plan"
    meta = build_engine(source, state.out / rel, config=build, timing_cache=state.out / "models" / "timing.cache")
    backend = TensorRTBackend(state.out / rel, precision=meta.precision, patch_size=tuple(state.patch),
                              max_batch=build.max_batch)
    reference = torch_runner(state.net)
    report = check_parity(reference, backend, state.patches("val").images[:state.options.parity_patches],
                          TOLERANCES.get(meta.precision, TOLERANCES["fp16"]))
    state.add(Artifact(kind="tensorrt", path=rel, precision=meta.precision, fold=state.source.fold,
                       patch_size=state.patch, info={"onnx": str(source.relative_to(state.out)),
                                                     "build": asdict(build), "engine": asdict(meta)}))
    rec = state.record(recipe, meta.precision, rel, reference=reference, candidate=backend,
                       reference_name="torch fp32 (CPU)", seconds=time.perf_counter() - t0, parity=report)
    rec["latency_ms_per_patch"]["device"] = f"{meta.gpu_name} vs cpu torch"


def compile_(state: State, recipe: Recipe) -> None:
    """torch.export program (``compile``) and optionally an AOTInductor package (``compile:aoti``)."""
    config: CompileConfig = state.options.compile
    t0 = time.perf_counter()
    rel = "models/model.pt2"
    path = export_program(state.net, state.patch, state.out / rel, config=config)
    reference, candidate = torch_runner(state.net), torch_runner(load_program(path))
    report = parity_gate(reference, candidate, state.patches("val").images[:state.options.parity_patches],
                         what=str(path), tolerance=TOLERANCES["fp32"])
    state.add(Artifact(kind="torch_export", path=rel, precision="fp32", fold=state.source.fold,
                       patch_size=state.patch, info={"format": "exported_program", "max_batch": config.max_batch}))
    state.record(recipe, "fp32", rel, reference=reference, candidate=candidate, reference_name="torch fp32 eager",
                 seconds=time.perf_counter() - t0, parity=report)
    if recipe.arg == "aoti" or config.aoti:
        rel = "models/model_aoti.pt2"
        device = compile_device(config)
        aoti_package(state.net, state.patch, state.out / rel, config=replace(config, aoti=True, device=device))
        state.add(Artifact(kind="torch_export", path=rel, precision="fp32", fold=state.source.fold,
                           patch_size=state.patch, info={"format": "aoti_package", "device": device,
                                                         "max_batch": config.max_batch}))
