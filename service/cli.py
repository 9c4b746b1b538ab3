"""Serve a model bundle over HTTP (FastAPI + uvicorn, one model instance behind a bounded queue).

With no arguments it serves the committed demo bundle on http://127.0.0.1:8000 (CUDA when available,
otherwise CPU). Every option can also be set as a PANCREAS_* environment variable (see
service/settings.py); flags override the environment. Try:

    pancreas serve &
    curl -F file=@case.nii.gz localhost:8000/v1/predict
"""

from __future__ import annotations

import argparse

from pancreas.backends import DEVICES, PRECISIONS, backend_choices
from pancreas.cli.inference_options import add_inference_options, inference_overrides
from service.settings import Settings

#: the inference defaults the service settings can override (no class weights there)
_INFERENCE = ("tta", "scales", "mirror_axes")
_FLAGS = {  # flag -> (Settings field, type, help; "{default}" is the Settings default)
    "--model": ("bundle", str, "model bundle folder (default: the committed demo bundle)"),
    "--host": ("host", str, "interface to bind (default {default}; 0.0.0.0 in containers)"),
    "--port": ("port", int, "TCP port (default {default})"),
    "--backend": ("backend", str, ("default {default}: tensorrt/onnxruntime/torch, whichever the bundle and "
                                   "host allow")),
    "--device": ("device", str, "default {default}: CUDA when available, otherwise CPU"),
    "--precision": ("precision", str, ("default {default}: the bundle's recommended precision, else the best "
                                       "TensorRT engine, else fp32")),
    "--queue-size": ("queue_size", int, "requests admitted at once before 503 (default {default})"),
    "--batch-size": ("batch_size", int, "sliding-window patches per forward pass (default {default})"),
    "--step-size": ("step_size", float, "sliding-window step as a fraction of the patch (default {default})"),
    "--request-timeout": ("request_timeout_s", float, "seconds before a request gets 504 (default {default:g})"),
    "--max-upload-bytes": ("max_upload_bytes", int, "largest accepted upload in bytes"),
    "--max-voxels": ("max_voxels", int, "largest accepted image in voxels"),
}
_CHOICES = {"--backend": backend_choices, "--device": lambda: DEVICES, "--precision": lambda: PRECISIONS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    fields = Settings.model_fields
    for flag, (field, kind, text) in _FLAGS.items():
        choices = _CHOICES[flag]() if flag in _CHOICES else None
        parser.add_argument(flag, type=kind, default=None, choices=choices,
                            help=text.format(default=fields[field].default))
    add_inference_options(parser, names=_INFERENCE)


def run(args: argparse.Namespace) -> int:
    from service.main import serve

    overrides = {field: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (field, _kind, _text) in _FLAGS.items()}
    overrides.update(inference_overrides(args, _INFERENCE))
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    return serve(settings)
