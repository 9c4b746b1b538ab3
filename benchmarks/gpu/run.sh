#!/usr/bin/env bash
# One-shot GPU benchmark: our engine vs nnU-Net v2's own predictor on one crop-size and one full-size
# phantom CT, same weights, same run. Prints ONE table and writes benchmarks/results/gpu-<date>.md.
#
#   bash benchmarks/gpu/run.sh                      # on a CUDA machine (< 6 min)
#   BENCH_ALLOW_CPU=1 bash benchmarks/gpu/run.sh    # CPU smoke: GPU candidates are skipped
#
# Offline machines: put wheels in .whl/ at the repository root (see benchmarks/gpu/README.md); they are
# installed with --no-index --no-deps into /tmp/site and put on PYTHONPATH. Nothing is downloaded.
#
# Environment (all optional):
#   BENCH_MODEL      bundle to benchmark (default: pancreas/demo_bundle, else a random-weight bundle)
#   BENCH_VARIANTS   folder of optimized bundles (ONNX/TensorRT) to add as candidates
#   BENCH_CROP / BENCH_FULL   number of crop / full phantoms (default 1 / 1)
#   BENCH_REPEATS    repeats of our candidates (default 3); BENCH_BASELINE_REPEATS for nnU-Net (default 1)
#   BENCH_CANDIDATES globs of candidates (default: all that can run here)
#   BENCH_WORK       scratch folder (default /tmp/pancreas-bench); BENCH_TIMEOUT seconds (default 330)
#   BENCH_RESULTS    where the markdown goes (default benchmarks/results)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WORK="${BENCH_WORK:-/tmp/pancreas-bench}"
RESULTS="${BENCH_RESULTS:-benchmarks/results}"
mkdir -p "$WORK" "$RESULTS"
LOG="$WORK/run.log"
: >"$LOG"
say() { echo "[run.sh] $*" >&2; }

# 1. missing pure-Python (and binary) wheels from .whl/, no index, no dependency resolution
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
  "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "nnunetv2", "dynamic_network_architectures", "SimpleITK", "nibabel", "pydantic", "psutil",
        "matplotlib", "tqdm", "scipy", "acvl_utils", "batchgenerators"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [[ -n "$missing" ]]; then
  say "missing Python packages: $missing (see benchmarks/gpu/README.md for the wheels to carry)"
  exit 3
fi

# 2. GPU or explicit CPU smoke
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
if [[ -z "$GPU" ]]; then
  if [[ "${BENCH_ALLOW_CPU:-0}" != "1" ]]; then
    say "no CUDA GPU visible to torch; set BENCH_ALLOW_CPU=1 for the CPU smoke run"
    exit 2
  fi
  say "no GPU: CPU smoke run (GPU candidates are skipped)"
  TAG="cpu-smoke"
else
  say "GPU: $GPU"
  TAG="gpu"
fi

# 3. phantoms (cached in $WORK/cases)
"$PY" -m benchmarks.phantom_cases "$WORK/cases" --crop "${BENCH_CROP:-1}" --full "${BENCH_FULL:-1}" \
  --seed 0 >>"$LOG" 2>&1

# 4. the model
MODEL="${BENCH_MODEL:-}"
if [[ -z "$MODEL" ]]; then
  if [[ -f pancreas/demo_bundle/configs/metadata.json ]]; then
    MODEL=pancreas/demo_bundle
  else
    MODEL="$WORK/random-bundle"
    say "no demo bundle: using a random-weight bundle (speed only; DSC is meaningless)"
    [[ -f "$MODEL/configs/metadata.json" ]] || "$PY" -c \
      "from pancreas.testing import make_random_bundle; make_random_bundle('$MODEL', seed=0)" >>"$LOG" 2>&1
  fi
fi
args=(--model "$MODEL")
[[ -n "${BENCH_VARIANTS:-}" ]] && args+=(--variants "$BENCH_VARIANTS")
if [[ -n "${BENCH_CANDIDATES:-}" ]]; then
  read -r -a globs <<<"$BENCH_CANDIDATES"
  args+=(--candidates "${globs[@]}")
elif [[ -n "$GPU" ]]; then
  args+=(--candidates "nnunet-*" "torch-*" "ort-*" "tensorrt-*")  # includes torch.compile on GPU
fi

# 5. compare: one table on stdout, details in $WORK/out and the log
STAMP="$(date -u +%Y%m%d-%H%M)"
NAME="$TAG-$STAMP"
set +e
timeout "${BENCH_TIMEOUT:-330}" "$PY" -m pancreas bench compare "${args[@]}" --cases "$WORK/cases" \
  --out "$WORK/out" --name "$NAME" --repeats "${BENCH_REPEATS:-3}" \
  --baseline-repeats "${BENCH_BASELINE_REPEATS:-1}" >"$WORK/table.txt" 2>>"$LOG"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  say "compare failed (exit $rc); last lines of $LOG:"
  tail -n 30 "$LOG" >&2
  exit "$rc"
fi
grep -v '^results:' "$WORK/table.txt"
cp "$WORK/out/$NAME.md" "$RESULTS/$NAME.md"
cp "$WORK/out/$NAME.json" "$RESULTS/$NAME.json"
cp "$WORK/out/$NAME.png" "$RESULTS/$NAME.png"
say "wrote $RESULTS/$NAME.md (+ .json, .png) on ${GPU:-CPU}"
