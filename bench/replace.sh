#!/usr/bin/env bash
# Replace mode (bundle-format.md §10.4) against a delta, on one corpus: builds a full bundle of NEW
# and a delta OLD→NEW (release binaries, --level fast: the apply is what is measured), then with a
# cold page cache applies the delta to a copy of OLD, the full bundle with --replace to a copy of
# OLD, and the full bundle with --replace to a copy of NEW (nothing to change: the cost of the
# scan). Prints wall time, peak RSS, staged objects, steps, commit window, bytes read from the
# bundle, and checks every result against NEW with rsync -c.
#
#   bash bench/replace.sh OLD NEW [WORKDIR]     (root: drops the page cache between runs)
set -euo pipefail
OLD=$1 NEW=$2 W=${3:-$(mktemp -d /var/tmp/ferry-replace.XXXXXX)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p ferry-applier -p ferry-builder --manifest-path "$ROOT/Cargo.toml"
R=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$W" && cd "$W"
rm -rf a b c k.* *.ferry
"$R/ferry-build" keygen --out k --unencrypted >/dev/null
"$R/ferry-build" -q build --new "$NEW" --key k.secret --version 2 --level fast --out full.ferry
"$R/ferry-build" -q build --old "$OLD" --new "$NEW" --key k.secret --version 2 --level fast --out delta.ferry
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); full bundle $(stat -c %s full.ferry) B, delta $(stat -c %s delta.ferry) B"
cp -a "$OLD" a; cp -a "$OLD" b; cp -a "$NEW" c
printf '| run | wall s | peak RSS | staged | steps | commit window ms | bundle bytes read | unchanged | removed | = NEW |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
for run in "delta a delta.ferry" "replace-old b full.ferry --replace" "replace-new c full.ferry --replace"; do
  set -- $run
  sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f "%e %M" -o time.txt "$R/ferry-apply" apply "$3" --target "$2" --trust k.pub --json ${4:-} > "rep-$2.json"
  diffs=$(rsync -rlpgoDcni --delete --exclude=.ferry "$NEW/" "$2/" | wc -l)
  python3 - "$1" "rep-$2.json" "$(cat time.txt)" "$diffs" <<'PY'
import json, sys
name, rep, t, diffs = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3].split(), sys.argv[4]
r = rep.get("replace") or {}
print(f"| {name} | {t[0]} | {int(t[1])//1024} MiB | {rep['staged_objects']} | {rep['steps']} | {rep['commit_window_ms']:.1f} | {rep['bundle_bytes_read']:,} | {r.get('unchanged', '–')} | {r.get('removed', '–')} | {'yes' if diffs == '0' else 'NO: ' + diffs} |")
PY
done
