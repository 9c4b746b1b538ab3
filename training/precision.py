"""Training arithmetic: fp32, or bf16 autocast on the CPU (one home for the names and the context).

CUDA keeps nnU-Net's own mixed precision (fp16 autocast with its grad scaler) whatever is chosen here. On a
CPU with AVX512-BF16 (or AMX), oneDNN runs the 3D convolutions in bfloat16 under ``torch.autocast``; the
network's outputs are cast back to float32 before the loss (:func:`as_float`), so Dice sums and softmax stay in
float32. bfloat16 keeps float32's exponent range, so no loss scaling is needed.
"""

from __future__ import annotations

import contextlib
from typing import Any

#: ``TrainOptions.precision`` values: ``fp32`` (default) or ``bf16`` (CPU autocast)
TRAINING_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def training_autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of one training or validation step on ``device_type``."""
    import torch

    from pancreas.backends.torch_backend import autocast  # precision name -> context, shared with inference

    if device_type == "cuda":
        return torch.autocast("cuda", enabled=True)  # nnU-Net's fp16 autocast (its grad scaler is set up)
    return autocast(precision, device_type)


def as_float(outputs: Any, device_type: str) -> Any:
    """``outputs`` (a tensor, or a list/tuple of deep-supervision tensors) in float32 for the loss; unchanged on
    CUDA, where nnU-Net computes the loss under its fp16 autocast. A no-op on float32 tensors."""
    if device_type == "cuda":
        return outputs
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(o.float() for o in outputs)
    return outputs.float()
