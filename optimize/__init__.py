"""Optimization stages for a model bundle: export → validate → convert/quantize/prune/distill → build.

Each stage is a library function with its own tests; :func:`optimize.recipes.optimize_bundle` chains them
(``pancreas optimize BUNDLE --recipe prune:0.3,onnx,int8 --out DIR``) into a new, servable bundle whose
metadata records, per stage, the precision built, parity, accuracy and latency changes and the versions.

=====================  ===============================================================================
module                 stage
=====================  ===============================================================================
``export_onnx``        ONNX export (fixed patch, dynamic batch, ``seg_logits``/``cls_logits``, onnxslim)
``validate``           parity gate (all failures collected into one error), patch-level accuracy
``quantize``           onnxruntime static QDQ per-channel INT8, calibrated on real phantom patches
``fp16``               ONNX float16 with float32 I/O (a GPU recipe; slower on CPU)
``prune``              torch-pruning structured channel pruning that respects the U-Net skips
``distill``            narrower/shallower student, distillation loss, the fine-tune loop
``compile``            ``torch.export`` programs and AOTInductor packages
``data``               real preprocessed patches from quiz-layout phantoms
``options``            ``OptimizeOptions`` (importable without torch: the CLI's flag defaults)
``state``              ``Recipe``, ``RecipeError`` and the working ``State`` the stages share
``recipes``/``stages`` recipe parsing, chaining and per-stage records
``cli``                ``pancreas optimize``
=====================  ===============================================================================

TensorRT engines are built by :mod:`pancreas.backends.tensorrt_build` (the core: the backend rebuilds with it);
the side-by-side measurements behind ``benchmarks/results/optimize.md`` live in ``benchmarks/``.
"""
