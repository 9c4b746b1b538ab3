#!/bin/sh
# Load generator of the compose `locust` / `locust-cpu` services (runs inside the CPU image).
# Makes phantom CT payloads once with `pancreas synth` (sizes from $LOADTEST_SIZES, default "crop"), unless
# $PANCREAS_LOCUST_PAYLOADS already holds *_0000.nii.gz files, then runs locust with the LOCUST_* settings
# from the environment (host, users, spawn rate, run time, CSV/HTML under /results).
set -eu
payloads="${PANCREAS_LOCUST_PAYLOADS:-/results/payloads}"
if [ -z "$(find "$payloads" -name '*_0000.nii.gz' 2>/dev/null | head -n 1)" ]; then
  for size in ${LOADTEST_SIZES:-crop}; do
    echo "loadtest.sh: writing $size phantoms to $payloads/$size"
    pancreas synth "$payloads/$size" --cases-per-subtype 1 --splits validation --shape "$size" \
      --headers canonical --seed 0
  done
fi
export PANCREAS_LOCUST_PAYLOADS="$payloads"
exec locust -f "${LOCUSTFILE:-/opt/pancreas/locustfile.py}" "$@"
