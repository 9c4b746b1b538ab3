#!/usr/bin/env bash
# Install pancreas-mtl into ./.venv (or $VENV).
#
# torch is installed FIRST and then pinned with a pip constraint: unconstrained, nnunetv2 ->
# dynamic-network-architectures -> timm -> torchvision would replace it with a multi-GB CUDA build.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.11.0" on a CUDA host) and EXTRAS (default: dev).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
constraint="$VENV/torch-constraint.txt"
"$VENV/bin/python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' >"$constraint"
echo "install.sh: pinned $(cat "$constraint")"
"$VENV/bin/python" -m pip install -q -c "$constraint" -e ".[${EXTRAS}]"
echo "install.sh: done. Try: $VENV/bin/pancreas demo"
