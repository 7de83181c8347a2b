#!/usr/bin/env bash
# Scale run of issue 18: build and apply a 1 % update of a generated tree of N files, for each
# N in SCALE_FILES (default "100000 1000000"), and report wall time and peak RSS of both, so
# that the growth from one N to the next can be read off (linear: 10x files, ~10x time).
#
#   bash bench/scale.sh                       # uses target/release binaries (builds them)
#   SCALE_FILES=1000000 bash bench/scale.sh   # one size only
#   FERRY_BIN_DIR=DIR BENCH_WORK=DIR ...      # as in bench/run.sh
#
# Trees go to $BENCH_WORK/scale-N/{old,new} (about 5.3 GB per million files per tree on ext4;
# kept for the next run), the applied copy to $BENCH_WORK/scale-N/target (removed after).
# Results: $BENCH_WORK/results/scale.tsv and a Markdown table on stdout.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
WORK="${BENCH_WORK:-$BENCH_DIR/work}"
SIZES="${SCALE_FILES:-100000 1000000}"
BIN="${FERRY_BIN_DIR:-$ROOT/target/release}"
log() { printf '[scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

main() {
    if [[ -z "${FERRY_BIN_DIR:-}" ]]; then
        (cd "$ROOT" && cargo build --release -p ferry-builder -p ferry-applier) >&2
    fi
    mkdir -p "$WORK/results"
    local keys="$WORK/scale-keys"
    [[ -f "$keys.secret" ]] || "$BIN/ferry-build" keygen --unencrypted --out "$keys" >/dev/null
    local tsv="$WORK/results/scale.tsv"
    printf 'files\tchanged\ttree_bytes\tbundle_bytes\tbuild_s\tbuild_rss_kib\tapply_s\tapply_rss_kib\tverified\n' > "$tsv"
    for n in $SIZES; do one "$n" "$keys" >> "$tsv"; done
    python3 - "$tsv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| files | changed | tree | bundle | build s | build peak RSS | apply s | apply peak RSS | applied tree = NEW |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    mib = lambda k: f"{int(r[k]) / 2**20:,.1f} MiB"
    print(f"| {int(r['files']):,} | {int(r['changed']):,} | {int(r['tree_bytes']) / 2**30:.2f} GiB | {mib('bundle_bytes')} "
          f"| {float(r['build_s']):.1f} | {int(r['build_rss_kib']) / 1024:.0f} MiB | {float(r['apply_s']):.1f} "
          f"| {int(r['apply_rss_kib']) / 1024:.0f} MiB | {r['verified']} |")
PY
}

# one N KEYS: prints one TSV row
one() {
    local n=$1 keys=$2 d="$WORK/scale-$1"
    if [[ ! -f "$d/.done" ]]; then
        rm -rf "$d"; mkdir -p "$d"
        log "generating $n files"
        python3 "$BENCH_DIR/gen_scale.py" old "$d/old" --files "$n"
        cp -a "$d/old" "$d/new"
        python3 "$BENCH_DIR/gen_scale.py" edit "$d/new" 2> "$d/edits.txt"
        touch "$d/.done"
    fi
    local changed; changed=$(grep -oE '[0-9]+' "$d/edits.txt" | paste -sd+ | bc)
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    log "$n files: build"
    /usr/bin/time -f '%e %M' -o "$d/build.time" "$BIN/ferry-build" build --old "$d/old" --new "$d/new" \
        --key "$keys.secret" --version 2 --out "$d/bundle.ferry" --json > "$d/build.json"
    rm -rf "$d/target"; cp -a "$d/old" "$d/target"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    log "$n files: apply"
    /usr/bin/time -f '%e %M' -o "$d/apply.time" "$BIN/ferry-apply" apply "$d/bundle.ferry" --target "$d/target" \
        --trust "$keys.pub" --json > "$d/apply.json"
    local verified=yes
    if [[ -n "$(rsync -rlpgoDc --dry-run --itemize-changes --delete --exclude /.ferry "$d/new/" "$d/target/" | head -5)" ]]; then
        verified=NO
    fi
    rm -rf "$d/target"
    local bt bm at am
    read -r bt bm < "$d/build.time"; read -r at am < "$d/apply.time"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$changed" "$(du -sb "$d/new" | cut -f1)" \
        "$(stat -c %s "$d/bundle.ferry")" "$bt" "$bm" "$at" "$am" "$verified"
}
main "$@"
