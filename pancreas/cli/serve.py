"""Serve a model bundle over HTTP (FastAPI + uvicorn, one model instance behind a bounded queue).

With no arguments it serves the committed demo bundle on http://127.0.0.1:8000 (CUDA when available,
otherwise CPU). Every option can also be set as a PANCREAS_* environment variable (see
service/settings.py); flags override the environment. Try:

    pancreas serve &
    curl -F file=@case.nii.gz localhost:8000/v1/predict
"""

from __future__ import annotations

import argparse

_FLAGS = {  # flag -> (Settings field, type, help)
    "--model": ("bundle", str, "model bundle folder (default: the committed demo bundle)"),
    "--host": ("host", str, "interface to bind (default 127.0.0.1; 0.0.0.0 in containers)"),
    "--port": ("port", int, "TCP port (default 8000)"),
    "--backend": ("backend", str, "default auto: tensorrt/onnxruntime/torch, whichever the bundle and host allow"),
    "--device": ("device", str, "default auto: CUDA when available, otherwise CPU"),
    "--precision": ("precision", str, "default fp32"),
    "--queue-size": ("queue_size", int, "requests admitted at once before 503 (default 8)"),
    "--batch-size": ("batch_size", int, "sliding-window patches per forward pass (default 2)"),
    "--step-size": ("step_size", float, "sliding-window step as a fraction of the patch (default 0.5)"),
    "--request-timeout": ("request_timeout_s", float, "seconds before a request gets 504 (default 300)"),
    "--max-upload-bytes": ("max_upload_bytes", int, "largest accepted upload in bytes"),
    "--max-voxels": ("max_voxels", int, "largest accepted image in voxels"),
}


_CHOICES = {"--backend": ("auto", "torch", "onnxruntime", "tensorrt", "torch_export"),
            "--device": ("auto", "cpu", "cuda"),
            "--precision": ("fp32", "fp16", "int8")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for flag, (_field, kind, text) in _FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, choices=_CHOICES.get(flag), help=text)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirroring test-time augmentation (default off)")


def run(args: argparse.Namespace) -> int:
    from service.main import serve
    from service.settings import Settings

    overrides = {field: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (field, _kind, _text) in _FLAGS.items()}
    overrides["tta"] = args.tta
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    return serve(settings)
