#!/usr/bin/env bash
# Device side of the carry plan (benchmarks/gpu/prepare_wheels.py): stash the part(s) of .whl/carry-*/ that
# this call carried in $BENCH_STASH, and once every part of the manifest is there (checked by sha256),
# unpack the wheels and install them with pip (--no-index --no-deps) into $BENCH_SITE.
#
#   exit 0   installed now, or already installed from the same archive
#   exit 10  parts still missing (an earlier call of a multi-call plan: expected, nothing else to do)
#   exit 11  a part or the archive does not match the manifest
# Environment: BENCH_STASH (default /tmp/pancreas-carry), BENCH_SITE (default /tmp/site), PYTHON.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STASH="${BENCH_STASH:-/tmp/pancreas-carry}"
SITE="${BENCH_SITE:-/tmp/site}"
PY="${PYTHON:-python3}"
mkdir -p "$STASH"
shopt -s nullglob
for dir in "$ROOT"/.whl/carry-*/; do
  cp "$dir"manifest.json "$STASH/manifest.json"
  cp "$dir"wheels.tar.xz.part* "$STASH/"
done
[[ -f "$STASH/manifest.json" ]] || { echo "[unpack] no .whl/carry-*/ carried and nothing stashed" >&2; exit 10; }

"$PY" - "$STASH" "$SITE" <<'PYEOF'
import hashlib, json, sys
from pathlib import Path

stash, site = Path(sys.argv[1]), Path(sys.argv[2])
m = json.loads((stash / "manifest.json").read_text())
marker = site / f".carry-{m['archive_sha256'][:16]}"
if marker.is_file():
    print(f"[unpack] already installed in {site}", file=sys.stderr)
    raise SystemExit(0)
have = [n for n, h in m["part_sha256"].items()
        if (stash / n).is_file() and hashlib.sha256((stash / n).read_bytes()).hexdigest() == h]
bad = [n for n in m["part_sha256"] if (stash / n).is_file() and n not in have]
if bad:
    print(f"[unpack] parts {bad} do not match the manifest: prepare the carry again", file=sys.stderr)
    raise SystemExit(11)
if len(have) < m["parts"]:
    print(f"[unpack] have {len(have)} of {m['parts']} parts in {stash}; carry the others", file=sys.stderr)
    raise SystemExit(10)
names = sorted(m["part_sha256"], key=lambda n: int(n.rsplit("part", 1)[1]))
(stash / "parts.txt").write_text("\n".join(str(stash / n) for n in names) + "\n")
PYEOF
[[ -f "$STASH/parts.txt" ]] || exit 0  # already installed

rm -rf "$STASH/wheels" && mkdir -p "$STASH/wheels" "$SITE"
xargs cat <"$STASH/parts.txt" | xz -d | tar -x -C "$STASH/wheels"
"$PY" - "$STASH" <<'PYEOF'
import hashlib, json, sys
from pathlib import Path
stash = Path(sys.argv[1])
m = json.loads((stash / "manifest.json").read_text())
got = len(list((stash / "wheels").glob("*.whl")))
if got != len(m["wheels"]):
    print(f"[unpack] archive held {got} wheels, manifest lists {len(m['wheels'])}", file=sys.stderr)
    raise SystemExit(11)
PYEOF
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$STASH"/wheels/*.whl >&2
sha=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['archive_sha256'][:16])" "$STASH/manifest.json")
touch "$SITE/.carry-$sha"
rm -f "$STASH/parts.txt"
rm -rf "$STASH/wheels"
echo "[unpack] installed the carried wheels into $SITE" >&2
