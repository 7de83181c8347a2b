#!/usr/bin/env bash
# Commit window on N changed files in one directory (default 10,000 files of 4 KiB, each with a
# small overwrite). Prints commit_window_ms of each of RUNS applies (a fresh target each time).
# Usage: bash bench/commit_window.sh [N] [RUNS]    (work files under ${W:-/tmp/ferry-cw})
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
RUNS=${2:-3}
W=${W:-/tmp/ferry-cw}
B=${B:-target/release}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p ferry-builder -p ferry-applier
if [ ! -f "$W/n$N.ferry" ]; then
  rm -rf "$W"
  mkdir -p "$W/old/d" "$W/new/d"
  python3 - "$W" "$N" <<'PY'
import os, sys, random
w, n = sys.argv[1], int(sys.argv[2])
r = random.Random(1)
for i in range(n):
    b = bytearray(r.randbytes(4096))
    with open(f"{w}/old/d/f{i:05d}", "wb") as f: f.write(b)
    b[100:108] = b"CHANGED!"
    with open(f"{w}/new/d/f{i:05d}", "wb") as f: f.write(b)
PY
  find "$W/old" "$W/new" -exec touch -h -d @1700000000 {} +
  $B/ferry-build keygen --unencrypted --out "$W/key" >/dev/null
  $B/ferry-build build -q --old "$W/old" --new "$W/new" --key "$W/key.secret" --version 2 --out "$W/n$N.ferry"
fi
for r in $(seq "$RUNS"); do
  rm -rf "$W/t"
  cp -a "$W/old" "$W/t"
  sync
  $B/ferry-apply apply "$W/n$N.ferry" --target "$W/t" --trust "$W/key.pub" --json -q >"$W/report.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("commit_window_ms %.1f  commit_ms %.1f  steps %d" % (r["commit_window_ms"], r["commit_ms"], r["steps"]))' "$W/report.json"
done
