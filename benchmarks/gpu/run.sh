#!/usr/bin/env bash
# One-shot GPU benchmark: our engine vs nnU-Net v2's own predictor, same weights, same run, inside one time
# budget. Cases: a quiz-median crop and full abdominal CTs (benchmarks/gpu/cases.py); bundles: the demo
# bundle and a random-weight network of nnU-Net's default size (benchmarks/gpu/archs.py). Prints a per-case
# table per bundle on stdout; writes <name>.md/.json/.log and a chart per bundle into BENCH_RESULTS.
#
#   BENCH_RESULTS=$OUT bash benchmarks/gpu/run.sh       # on a CUDA machine (<= 8 min with start-up)
#   BENCH_ALLOW_CPU=1 BENCH_CASES=tiny BENCH_ARCH=small bash benchmarks/gpu/run.sh   # CPU smoke
#
# Offline machines: the wheels travel as .whl/carry-N/ (benchmarks/gpu/prepare_wheels.py, README.md);
# benchmarks/gpu/unpack.sh installs them into BENCH_SITE, which goes first on PYTHONPATH. Nothing is downloaded.
#
# Environment (all optional):
#   BENCH_MODEL      bundle(s), space-separated, one phase each (default: pancreas/demo_bundle)
#   BENCH_ARCH       random-weight network phase: nnunet (default), small, or none
#   BENCH_CASES      case names of benchmarks/gpu/cases.py (default: crop full111 full300; tiny for smoke runs)
#   BENCH_REPEATS    repeats of our candidates (default 3); BENCH_BASELINE_REPEATS for nnU-Net (default 1)
#   BENCH_CANDIDATES globs of candidates (default on GPU: nnU-Net, torch fp32/fp16/compiled fp16, ort on CUDA)
#   BENCH_TIMEOUT    seconds for the whole script, start-up included (default 450); runs that cannot finish
#                    in time are left out and reported, the run in flight at the deadline is dropped
#   BENCH_WORK       scratch folder (default /tmp/pancreas-bench); BENCH_SITE (default /tmp/site)
#   BENCH_RESULTS    where the results go (default benchmarks/results; $OUT on the device machine)
set -euo pipefail

START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WORK="${BENCH_WORK:-/tmp/pancreas-bench}"
RESULTS="${BENCH_RESULTS:-benchmarks/results}"
BUDGET="${BENCH_TIMEOUT:-450}"
DEADLINE=$((START + BUDGET))
mkdir -p "$WORK" "$RESULTS"
say() { echo "[run.sh] $*" >&2; }

# 1. GPU or explicit CPU smoke (torch is in the GPU image; nothing else is needed to decide)
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

# 2. the carried wheels, only when something is missing (no index, no dependency resolution)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
missing() {
  "$PY" - <<'EOF'
import importlib.util
need = ["torch", "nnunetv2", "dynamic_network_architectures", "SimpleITK", "nibabel", "pydantic", "psutil",
        "matplotlib", "tqdm", "scipy", "acvl_utils", "batchgenerators", "blosc2"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
}
absent=$(missing)
if [[ -n "$absent" ]] && { compgen -G ".whl/carry-*/manifest.json" >/dev/null || [[ -f "${BENCH_STASH:-/tmp/pancreas-carry}/manifest.json" ]]; }; then
  set +e
  PYTHON="$PY" bash benchmarks/gpu/unpack.sh
  rc=$?
  set -e
  if [[ $rc -eq 10 ]]; then say "carry incomplete: this call only stashed its part"; exit 10; fi
  [[ $rc -eq 0 ]] || exit "$rc"
  export PYTHONPATH="${BENCH_SITE:-/tmp/site}:$PYTHONPATH"
  absent=$(missing)
fi
if [[ -n "$absent" ]]; then
  say "missing Python packages: $absent (see benchmarks/gpu/README.md: carry the wheels)"
  exit 3
fi
NAME="$TAG-$(date -u +%Y%m%d-%H%M)"
LOG="$RESULTS/$NAME.log"

# 3. the suite: one phase per bundle, per-case tables on stdout, details in the log
read -r -a models <<<"${BENCH_MODEL:-pancreas/demo_bundle}"
read -r -a cases <<<"${BENCH_CASES:-crop full111 full300}"
args=(--work "$WORK" --results "$RESULTS" --name "$NAME" --arch "${BENCH_ARCH:-nnunet}" --cases "${cases[@]}"
      --repeats "${BENCH_REPEATS:-3}" --baseline-repeats "${BENCH_BASELINE_REPEATS:-1}" --deadline "$DEADLINE")
for m in "${models[@]}"; do args+=(--model "$m"); done
if [[ -n "${BENCH_CANDIDATES:-}" ]]; then
  read -r -a globs <<<"$BENCH_CANDIDATES"
  args+=(--candidates "${globs[@]}")
elif [[ -n "$GPU" ]]; then
  args+=(--candidates "nnunet-*" torch-fp32 torch-fp32-c2f torch-fp16 torch-fp16-c2f "torch-compiled-fp16*" "ort-*")
fi
say "budget ${BUDGET} s from the start; $(( DEADLINE - $(date +%s) )) s left for the suite; log: $LOG"
set +e
# the suite stops itself at the deadline; timeout is the backstop (SIGTERM: it still writes what finished)
timeout -k 20 $(( DEADLINE - $(date +%s) + 30 )) "$PY" -m benchmarks.gpu.suite "${args[@]}" 2>>"$LOG"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  say "suite exit $rc; last lines of $LOG:"
  tail -n 30 "$LOG" >&2
fi
say "wrote $RESULTS/$NAME.md (+ .json, .log, charts) on ${GPU:-CPU} in $(( $(date +%s) - START )) s"
exit "$rc"
