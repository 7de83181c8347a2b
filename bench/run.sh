#!/usr/bin/env bash
# ferry benchmark: ferry vs rsync batch, per-file zstd/xdelta3/bsdiff, tar|zstd, OSTree static deltas.
#
#   bash bench/run.sh                 # every corpus in bench/work that bench/corpora.sh finished
#   bash bench/run.sh pyext rootfs-up npm   # issue 18's corpora only
#   bash bench/run.sh synth wheels    # only these
#
# Environment knobs:
#   BENCH_TOOLS="ferry rsync perfile tarzst ostree"   which measurements to run (default: all);
#                e.g. BENCH_TOOLS=ferry re-measures ferry only and keeps the stored competitor numbers
#   FERRY_LEVELS="default"    ferry --level values to measure (e.g. "fast default max"); LEVEL+keep-mtimes
#                             also builds with --keep-unchanged-mtimes (e.g. "default default+keep-mtimes")
#   SKIP_CARGO_BUILD=1        use the existing target/release binaries
#   FERRY_BIN_DIR=DIR         take ferry-build/ferry-apply from DIR instead of target/release
#   VERIFY_EXCLUDE="pat ..."  rsync --exclude patterns ignored when comparing an applied tree with new
#   FERRY_STATE_DIR=.ferry    ferry-apply's state dir in the target (excluded from ferry's check, size reported)
#   KEEP_SCRATCH=1            keep bench/work/scratch (applied trees, bundles, repos)
#   BENCH_RUNS=3              runs of each ferry build and apply and of each rsync/zstd step; the
#                             median wall time is reported (all runs are in the notes)
#   BENCH_WORK=DIR            corpora/results/scratch elsewhere than bench/work
#   BENCH_RESULTS_MD=FILE     write the Markdown there instead of bench/RESULTS.md
#
# Results: one TSV per corpus and method family in bench/work/results/CORPUS/,
# rendered by bench/report.py into bench/RESULTS.md (and printed).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
WORK="${BENCH_WORK:-$BENCH_DIR/work}"
RES="$WORK/results"
SCR="$WORK/scratch"
TOOLS=" ${BENCH_TOOLS:-ferry rsync perfile tarzst ostree} "
FERRY_LEVELS="${FERRY_LEVELS:-default default+keep-mtimes}"
FERRY_STATE_DIR="${FERRY_STATE_DIR:-.ferry}"   # ferry-apply's state directory inside the target
RUNS="${BENCH_RUNS:-3}"                         # timed runs of ferry build/apply and rsync (median)
ALL=(wheels rootfs synth commit10k pyext rootfs-up npm pyext-arm64 rootfs-up-arm64)
TIME=/usr/bin/time
ZSTD_LVL=(-19 --long=27)

log()  { printf '[run %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { log "WARNING: $*"; }
die()  { log "ERROR: $*"; exit 1; }
want() { [[ "$TOOLS" == *" $1 "* ]]; }

# The whole script is one function, called on the last line: bash has parsed all of it before
# running anything, so editing this file while a run is in progress cannot derail that run.
main() {
# ------------------------------------------------------------------ setup
[[ $EUID -eq 0 ]] || warn "not root: rootfs trees (root-owned, device nodes) will not copy/verify correctly"
[[ -d "$WORK" ]] || die "no $WORK: run bash bench/corpora.sh first"

install_tools() {
    local missing=() pair
    for pair in rsync:rsync xdelta3:xdelta3 bsdiff:bsdiff zstd:zstd ostree:ostree /usr/bin/time:time python3:python3 tar:tar; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
    } || die "apt-get install ${missing[*]} failed"
}
install_tools

if [[ $# -gt 0 ]]; then
    CORPORA=("$@")
else
    CORPORA=()
    for c in "${ALL[@]}"; do [[ -f "$WORK/$c/.done" ]] && CORPORA+=("$c"); done
fi
((${#CORPORA[@]})) || die "no finished corpora in $WORK (run bash bench/corpora.sh)"
for c in "${CORPORA[@]}"; do
    [[ -d "$WORK/$c/old" && -d "$WORK/$c/new" ]] || die "corpus $c: $WORK/$c/{old,new} missing (bash bench/corpora.sh $c)"
done
mkdir -p "$RES" "$SCR"

# timed NAME CMD... : runs CMD under /usr/bin/time; sets T_<NAME>_S (wall s) and T_<NAME>_KIB (peak RSS).
# Returns CMD's exit status. Redirect CMD's output at the call site.
timed() {
    local name=$1; shift
    local tf; tf=$(mktemp)
    local rc=0
    "$TIME" -f '%e %M' -o "$tf" -- "$@" || rc=$?
    local line; line=$(tail -n1 "$tf"); rm -f "$tf"
    printf -v "T_${name}_S" '%s' "${line% *}"
    printf -v "T_${name}_KIB" '%s' "${line#* }"
    return $rc
}

# put METHOD FIELD VALUE -> current results file
put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$OUTF"; }
begin_results() { OUTF="$RES/$C/$1.tsv"; : > "$OUTF"; }

fsize() { stat -c %s "$1"; }
dsize() { du -sb "$1" | cut -f1; }     # apparent bytes of a file or directory
addf() { python3 -c 'import sys; print(f"{sum(float(x) for x in sys.argv[1:]):.2f}")' "$@"; }
maxi() { printf '%s\n' "$@" | sort -n | tail -n1; }

# again NAME SETUP CMD... : after a first `timed NAME CMD...`, run SETUP (a shell command line) and
# CMD BENCH_RUNS-1 more times (output discarded); T_NAME_S becomes the median wall time of all runs,
# T_NAME_ALL lists them, T_NAME_KIB is the largest peak RSS. Disk flush times on the reference
# machine vary by 2-5x between identical runs, so single runs decide nothing.
again() {
    local name=$1 setup=$2; shift 2
    local s="T_${name}_S" k="T_${name}_KIB"
    local all=("${!s}") kib=${!k} i
    for ((i = 1; i < RUNS; i++)); do
        eval "$setup"
        if ! timed "$name" "$@" > /dev/null 2>&1; then
            warn "$name: run $((i + 1)) of $RUNS failed; keeping the earlier runs"
            break
        fi
        all+=("${!s}")
        if (( ${!k} > kib )); then kib=${!k}; fi
    done
    printf -v "T_${name}_ALL" '%s' "${all[*]}"
    printf -v "$s" '%s' "$(printf '%s\n' "${all[@]}" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')"
    printf -v "$k" '%s' "$kib"
}

# trash PATH... : move PATHs aside into $SCR/trash (a rename) instead of deleting them. After a
# deleted tree, ext4's inode allocator skips the recently freed inodes for minutes (perf:
# ext4_create -> find_inode_bit -> recently_deleted), and on a filesystem mounted with `discard`
# (the reference machine's) the disk works through the discards: every apply timed then waited 3-5x
# longer for its first fsync (ferry's commit: 1.0 s right after a build, 4.4-5.5 s right after
# `rm -rf` of the previous run's target), while rsync, which never syncs, did not. The trash is
# emptied once, after everything is measured.
trash() {
    local p t
    for p in "$@"; do
        [[ -e "$p" || -L "$p" ]] || continue
        mkdir -p "$SCR/trash"
        t=$(mktemp -d "$SCR/trash/t.XXXXXX")   # a fresh directory each time (also from subshells)
        mv "$p" "$t/"
    done
}

fresh_copy() { # fresh_copy SRC DST
    trash "$2"
    cp -a "$1" "$2"
    # Flush the copy before anything is timed on it: an apply that syncs (ferry's syncfs) would
    # otherwise also pay for writing out this copy's dirty pages, and one that does not (rsync
    # --read-batch) would not.
    sync
}

# verify EXPECTED ACTUAL LOG -> echoes "OK" or "DIFF(n)"; content (checksums), types, symlink
# targets, permissions, owners, device nodes; not mtimes, not hardlink structure.
verify() {
    local ex=() p
    for p in ${VERIFY_EXCLUDE:-}; do ex+=(--exclude="$p"); done
    rsync -rlpgoD --numeric-ids -c -n --delete --itemize-changes "${ex[@]}" "$1/" "$2/" > "$3" 2>&1 || true
    local n; n=$(grep -cv '^$' "$3" || true)
    if [[ "$n" == 0 ]]; then echo OK; else echo "DIFF($n)"; fi
}

# ------------------------------------------------------------------ ferry build
FB="${FERRY_BIN_DIR:-$ROOT/target/release}/ferry-build"
FA="${FERRY_BIN_DIR:-$ROOT/target/release}/ferry-apply"
FERRY_STATUS="not requested"
if want ferry; then
    if [[ -n "${SKIP_CARGO_BUILD:-}" ]]; then
        FERRY_STATUS="cargo build skipped (SKIP_CARGO_BUILD)"
    else
        log "cargo build --release -p ferry-builder -p ferry-applier (log: $RES/cargo-build.log)"
        if (cd "$ROOT" && cargo build --release -p ferry-builder -p ferry-applier) > "$RES/cargo-build.log" 2>&1; then
            FERRY_STATUS="built"
        else
            warn "cargo build failed (tail of $RES/cargo-build.log below); ferry columns will be n/a unless old binaries exist"
            tail -n 15 "$RES/cargo-build.log" >&2
            FERRY_STATUS="cargo build failed"
        fi
    fi
    if [[ -x "$FB" && -x "$FA" ]]; then
        if [[ "$FERRY_STATUS" != built ]]; then
            FERRY_STATUS="$FERRY_STATUS; measured the existing binaries of $(date -u -r "$FB" '+%F %H:%M UTC')"
            warn "using the existing ferry binaries ($(date -u -r "$FB" '+%F %H:%M UTC'))"
        fi
        KEYS="$SCR/keys"; mkdir -p "$KEYS"
        if [[ ! -f "$KEYS/bench.secret" ]] && ! "$FB" keygen --unencrypted --out "$KEYS/bench" > "$KEYS/keygen.log" 2>&1; then
            warn "ferry-build keygen failed: $(tail -n3 "$KEYS/keygen.log")"
            FERRY_STATUS="$FERRY_STATUS; keygen failed"
        fi
        [[ -f "$KEYS/bench.secret" && -f "$KEYS/bench.pub" ]] && FERRY_OK=1 || FERRY_OK=0
    else
        warn "ferry binaries missing ($FB, $FA): ferry rows will be n/a"
        FERRY_STATUS="$FERRY_STATUS; binaries missing"
        FERRY_OK=0
    fi
fi

# extract "commit window"-like fields (and the rest) from a JSON report; prints key=value lines
json_fields() {
    python3 - "$1" <<'EOF' 2>/dev/null || true
import json, sys
try:
    txt = open(sys.argv[1]).read()
    start = txt.find("{")
    doc = json.JSONDecoder().raw_decode(txt[start:])[0] if start >= 0 else {}
except Exception:
    sys.exit(0)
def flat(x, pre=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{pre}{k}.")
    elif not isinstance(x, list):
        yield pre[:-1], x
for i, (k, v) in enumerate(flat(doc)):
    if i < 80:
        print(f"{k}={v}")
EOF
}

measure_ferry() {
    begin_results ferry
    local spec i=0
    for spec in $FERRY_LEVELS; do
        # LEVEL, or LEVEL+keep-mtimes for a build with --keep-unchanged-mtimes
        local level="${spec%%+*}" extra=() m="ferry --level ${spec%%+*}"
        if [[ "$spec" == *+keep-mtimes ]]; then extra=(--keep-unchanged-mtimes); m="$m --keep-unchanged-mtimes"; fi
        put "$m" order "1$((i++))"
        if [[ "${FERRY_OK:-0}" != 1 ]]; then
            put "$m" note "n/a: $FERRY_STATUS"
            continue
        fi
        [[ "$FERRY_STATUS" == built ]] || put "$m" note "$FERRY_STATUS"
        local d="$S/ferry-$spec"; trash "$d"; mkdir -p "$d"
        local bundle="$d/bundle.ferry" args=(--level "$level" --json "${extra[@]}")
        log "$C: ${m/ferry/ferry build}"
        if ! timed fb "$FB" build --old "$O" --new "$N" --key "$KEYS/bench.secret" --version 2 \
                --out "$bundle" "${args[@]}" > "$d/build.json" 2> "$d/build.err"; then
            # maybe --level/--json are not implemented yet: retry with the bare contract
            if grep -qiE "unexpected argument|unrecognized|unknown (option|argument)|not implemented" "$d/build.err"; then
                warn "ferry build rejected '${args[*]}', retrying without"
                put "$m" note "build without --level/--json ($(grep -m1 -iE 'unexpected|unrecognized|unknown|not implemented' "$d/build.err" | cut -c1-80))"
                args=()
                timed fb "$FB" build --old "$O" --new "$N" --key "$KEYS/bench.secret" --version 2 \
                    --out "$bundle" > "$d/build.json" 2> "$d/build.err" || true
            fi
        fi
        if [[ ! -s "$bundle" ]]; then
            warn "ferry build failed: $(tail -n3 "$d/build.err" | tr '\n' ' ')"
            put "$m" note "build failed: $(tail -n1 "$d/build.err" | cut -c1-120)"
            continue
        fi
        put "$m" size "$(fsize "$bundle")"
        # where the bytes go: the bundle is a tar of manifest.cbor (one zstd frame of CBOR),
        # signatures.cbor and payload members (bundle-format.md §2, §4.6)
        local mb sb pb pn
        read -r mb sb pb pn < <(tar -tvf "$bundle" | awk '{ if ($6 ~ /manifest/) m += $3; else if ($6 ~ /signatures/) g += $3; else { p += $3; k++ } }
                                                     END { print m + 0, g + 0, p + 0, k + 0 }')
        put "$m" manifest_bytes "$mb"; put "$m" signatures_bytes "$sb"; put "$m" payload_bytes "$pb"; put "$m" payload_members "$pn"
        put "$m" manifest_cbor_bytes "$(tar -xOf "$bundle" --wildcards '*/manifest.cbor' | zstd -q -d -c | wc -c)"
        again fb : "$FB" build --old "$O" --new "$N" --key "$KEYS/bench.secret" --version 2 \
            --out "$d/again.ferry" "${args[@]}"
        rm -f "$d/again.ferry"
        put "$m" build_s "$T_fb_S"; put "$m" build_kib "$T_fb_KIB"
        local kv
        while IFS= read -r kv; do put "$m" json "build.$kv"; done < <(json_fields "$d/build.json")

        log "$C: ferry apply (onto a fresh copy of old)"
        fresh_copy "$O" "$S/target"
        local aargs=(--json)
        if ! timed fa "$FA" apply "$bundle" --target "$S/target" --trust "$KEYS/bench.pub" "${aargs[@]}" \
                > "$d/apply.json" 2> "$d/apply.err"; then
            if grep -qiE "unexpected argument|unrecognized|unknown (option|argument)" "$d/apply.err"; then
                warn "ferry apply rejected --json, retrying without"
                fresh_copy "$O" "$S/target"
                timed fa "$FA" apply "$bundle" --target "$S/target" --trust "$KEYS/bench.pub" \
                    > "$d/apply.json" 2> "$d/apply.err" || { put "$m" note "apply failed: $(tail -n1 "$d/apply.err" | cut -c1-120)"; continue; }
            else
                warn "ferry apply failed: $(tail -n3 "$d/apply.err" | tr '\n' ' ')"
                put "$m" note "apply failed: $(tail -n1 "$d/apply.err" | cut -c1-120)"
                continue
            fi
        fi
        # the first run's JSON report stays in apply.json; the later runs land on fresh copies too
        again fa 'fresh_copy "$O" "$S/target"' "$FA" apply "$bundle" --target "$S/target" --trust "$KEYS/bench.pub" "${aargs[@]}"
        put "$m" apply_s "$T_fa_S"; put "$m" apply_kib "$T_fa_KIB"
        put "$m" note "wall times of $RUNS runs (median shown): build ${T_fb_ALL} s, apply ${T_fa_ALL} s"
        local cw="" cw2=""
        while IFS= read -r kv; do
            put "$m" json "apply.$kv"
            # prefer a field named like commit_window*, else commit*ms/time
            if [[ -z "$cw" && "${kv%%=*}" =~ [Cc]ommit_?[Ww]indow ]]; then cw="${kv%%=*} = ${kv#*=}"
            elif [[ -z "$cw2" && "${kv%%=*}" =~ [Cc]ommit.*(_ms|[Tt]ime|[Ww]indow) ]]; then cw2="${kv%%=*} = ${kv#*=}"; fi
        done < <(json_fields "$d/apply.json")
        cw="${cw:-$cw2}"
        put "$m" commit_window "${cw:-n/a}"
        # ferry keeps its own state (journal, previous version for rollback) in TARGET/$FERRY_STATE_DIR:
        # not part of the comparison with new, but its size is reported
        if [[ -e "$S/target/$FERRY_STATE_DIR" ]]; then
            put "$m" note "target/$FERRY_STATE_DIR after apply: $(du -sb "$S/target/$FERRY_STATE_DIR" | cut -f1) B in $(find "$S/target/$FERRY_STATE_DIR" | wc -l) entries (excluded from the check)"
        fi
        put "$m" verify "$(VERIFY_EXCLUDE="${VERIFY_EXCLUDE:-} /$FERRY_STATE_DIR" verify "$N" "$S/target" "$d/verify.log")"
    done
}

measure_rsync() {
    begin_results rsync
    local d="$S/rsync"; trash "$d"; mkdir -p "$d"
    local opts=(-aH --numeric-ids --delete --no-whole-file)
    local mr="rsync batch (raw)" mz="rsync batch + zstd -19"
    put "$mr" order 20; put "$mz" order 21
    log "$C: rsync --only-write-batch"
    fresh_copy "$O" "$S/target"
    timed rw rsync "${opts[@]}" --only-write-batch="$d/batch" "$N/" "$S/target/" > "$d/write.log" 2>&1 \
        || { put "$mr" note "rsync write-batch failed: $(tail -n1 "$d/write.log")"; return 0; }
    # --only-write-batch leaves the target alone: the later runs write the same batch again
    again rw : rsync "${opts[@]}" --only-write-batch="$d/batch" "$N/" "$S/target/"
    log "$C: zstd the batch"
    timed rz zstd -q -f "${ZSTD_LVL[@]}" -T0 "$d/batch" -o "$d/batch.zst"
    again rz : zstd -q -f "${ZSTD_LVL[@]}" -T0 "$d/batch" -o "$d/batch.zst"
    timed rd zstd -q -f -d --long=27 "$d/batch.zst" -o "$d/batch.dec"
    again rd : zstd -q -f -d --long=27 "$d/batch.zst" -o "$d/batch.dec"
    trash "$d/batch.dec"
    log "$C: rsync --read-batch onto a fresh copy of old"
    # --only-write-batch left $S/target untouched: it is still a fresh copy of old
    timed rr rsync "${opts[@]}" --read-batch="$d/batch" "$S/target/" > "$d/read.log" 2>&1 \
        || put "$mr" note "read-batch failed: $(tail -n1 "$d/read.log")"
    again rr 'fresh_copy "$O" "$S/target"' rsync "${opts[@]}" --read-batch="$d/batch" "$S/target/"
    put "$mr" note "wall times of $RUNS runs (median shown): write-batch ${T_rw_ALL} s, read-batch ${T_rr_ALL} s"
    put "$mz" note "wall times of $RUNS runs (median shown): zstd ${T_rz_ALL} s, zstd -d ${T_rd_ALL} s"
    local v; v=$(verify "$N" "$S/target" "$d/verify.log")
    put "$mr" size "$(fsize "$d/batch")"
    put "$mr" build_s "$T_rw_S"; put "$mr" build_kib "$T_rw_KIB"
    put "$mr" apply_s "$T_rr_S"; put "$mr" apply_kib "$T_rr_KIB"; put "$mr" verify "$v"
    put "$mz" size "$(fsize "$d/batch.zst")"
    put "$mz" build_s "$(addf "$T_rw_S" "$T_rz_S")"; put "$mz" build_kib "$(maxi "$T_rw_KIB" "$T_rz_KIB")"
    put "$mz" apply_s "$(addf "$T_rd_S" "$T_rr_S")"; put "$mz" apply_kib "$(maxi "$T_rd_KIB" "$T_rr_KIB")"; put "$mz" verify "$v"
    put "$mz" note "build = write-batch ${T_rw_S}s + zstd ${T_rz_S}s; apply = zstd -d ${T_rd_S}s + read-batch ${T_rr_S}s"
}

measure_perfile() {
    begin_results perfile
    local d="$S/perfile"
    [[ -f "$d/stats.tsv" ]] || die "internal: classify missing"
    log "$C: added files as one tar | zstd -19 --long=27 stream"
    timed add bash -c 'set -o pipefail; tar -C "$1" --null --no-recursion -T "$2" -cf - | zstd -q '"${ZSTD_LVL[*]}"' -T0 > "$3"' \
        _ "$N" "$d/added.lst" "$d/added.tar.zst"
    local addsz; addsz=$(fsize "$d/added.tar.zst")
    local t
    for t in zstd xdelta3 bsdiff; do
        log "$C: per-file $t over $(tr -cd '\0' < "$d/changed.lst" | wc -c) changed files"
        timed "pf_$t" python3 "$BENCH_DIR/perfile.py" run "$t" "$O" "$N" "$d" 2> "$d/$t.log" \
            || { warn "per-file $t failed: $(tail -n2 "$d/$t.log")"; }
        local kv="T_pf_${t}_KIB"; printf -v "KIB_$t" '%s' "${!kv:-0}"
    done
    local -A sum
    local meth field val
    while IFS=$'\t' read -r meth field val; do sum["$meth.$field"]="$val"; done \
        < <(python3 "$BENCH_DIR/perfile.py" summary "$d")
    local label order=30
    for t in zstd xdelta3 bsdiff best; do
        case $t in
            zstd) label="per-file zstd -19 --patch-from + added" ;;
            xdelta3) label="per-file xdelta3 -9 + added" ;;
            bsdiff) label="per-file bsdiff + added" ;;
            best) label="per-file best of 3 + added" ;;
        esac
        put "$label" order $((order++))
        if [[ -z "${sum[perfile.$t.delta_bytes]:-}" ]]; then put "$label" note "n/a (tool failed)"; continue; fi
        put "$label" size $(( ${sum[perfile.$t.delta_bytes]} + addsz ))
        put "$label" build_s "$(addf "${sum[perfile.$t.delta_seconds]}" "$T_add_S")"
        if [[ $t == best ]]; then
            put "$label" build_kib "$(maxi "$KIB_zstd" "$KIB_xdelta3" "$KIB_bsdiff" "$T_add_KIB")"
            put "$label" note "smallest of the three per file (wins: ${sum[perfile.best.wins]}); time = all three"
        else
            local kn="KIB_$t"
            put "$label" build_kib "$(maxi "${!kn:-0}" "$T_add_KIB")"
            local note="deltas ${sum[perfile.$t.delta_bytes]} B + added stream $addsz B"
            [[ -n "${sum[perfile.$t.skipped]:-}" ]] && note="$note; ${sum[perfile.$t.skipped]} files >64MiB not bsdiffed (zstd -19 of the whole new file instead)"
            [[ -n "${sum[perfile.$t.empty]:-}" ]] && note="$note; ${sum[perfile.$t.empty]} files empty on one side not bsdiffed (bsdiff cannot mmap an empty file; zstd -19 of the whole new file instead)"
            put "$label" note "$note"
        fi
    done
}

measure_tarzst() {
    begin_results tarzst
    local d="$S/tarzst"; trash "$d"; mkdir -p "$d"
    local m="tar | zstd -19 (whole new tree)"
    put "$m" order 50
    log "$C: tar | zstd -19 --long=27 -T0 of the whole new tree"
    timed tz bash -c 'set -o pipefail; tar -C "$1" -cf - . | zstd -q '"${ZSTD_LVL[*]}"' -T0 > "$2"' _ "$N" "$d/new.tar.zst"
    put "$m" size "$(fsize "$d/new.tar.zst")"
    put "$m" build_s "$T_tz_S"; put "$m" build_kib "$T_tz_KIB"
    mkdir -p "$S/target-tar"
    timed tx bash -c 'set -o pipefail; zstd -q -d --long=27 -c "$1" | tar -C "$2" --numeric-owner -xpf -' _ "$d/new.tar.zst" "$S/target-tar"
    put "$m" apply_s "$T_tx_S"; put "$m" apply_kib "$T_tx_KIB"
    put "$m" verify "$(verify "$N" "$S/target-tar" "$d/verify.log")"
    put "$m" note "apply = extract into an empty directory"
    trash "$S/target-tar"
    trash "$d/new.tar.zst"
}

measure_ostree() {
    begin_results ostree
    local d="$S/ostree"; trash "$d"; mkdir -p "$d"
    local m="OSTree static delta (--inline --min-fallback-size=0)"
    put "$m" order 60
    local oo="$O" nn="$N" note=""
    local so sn
    so=$(find "$O" \( -type b -o -type c -o -type p -o -type s \) | wc -l)
    sn=$(find "$N" \( -type b -o -type c -o -type p -o -type s \) | wc -l)
    if [[ $((so + sn)) -gt 0 ]]; then
        log "$C: device nodes/fifos/sockets (old $so, new $sn): copying trees without them for OSTree"
        rsync -aH --no-devices --no-specials "$O/" "$d/old/" > "$d/copy.log" 2>&1
        rsync -aH --no-devices --no-specials "$N/" "$d/new/" >> "$d/copy.log" 2>&1
        oo="$d/old"; nn="$d/new"
        note="trees copied without their device nodes/specials (old $so, new $sn: OSTree cannot store them); "
    fi
    ostree init --repo="$d/repo" --mode=archive
    log "$C: ostree commit old, new"
    local r1 r2
    timed oc1 ostree commit --repo="$d/repo" --branch=b --tree=dir="$oo" > "$d/rev1" 2> "$d/commit.err" \
        || { put "$m" note "${note}ostree commit failed: $(tail -n1 "$d/commit.err")"; return 0; }
    timed oc2 ostree commit --repo="$d/repo" --branch=b --tree=dir="$nn" > "$d/rev2" 2>> "$d/commit.err" \
        || { put "$m" note "${note}ostree commit failed: $(tail -n1 "$d/commit.err")"; return 0; }
    r1=$(tail -n1 "$d/rev1"); r2=$(tail -n1 "$d/rev2")
    log "$C: ostree static-delta generate"
    # --min-fallback-size=0: self-contained (no object left out for a separate HTTP fetch);
    # without it objects > 4 MiB are not in the delta and apply-offline refuses it
    timed og ostree static-delta generate --repo="$d/repo" --from="$r1" --to="$r2" --inline --min-fallback-size=0 \
        --filename="$d/delta" \
        > "$d/generate.log" 2>&1 || { put "$m" note "${note}static-delta generate failed: $(tail -n1 "$d/generate.log")"; return 0; }
    put "$m" size "$(dsize "$d/delta")"
    put "$m" build_s "$T_og_S"; put "$m" build_kib "$T_og_KIB"
    # apply: a second repo holding only the old commit, apply-offline the delta into it
    ostree init --repo="$d/repo2" --mode=bare   # apply-offline needs a bare repo
    ostree pull-local --repo="$d/repo2" "$d/repo" "$r1" > /dev/null 2>&1 || true
    if timed oa ostree static-delta apply-offline --repo="$d/repo2" "$d/delta" > "$d/apply.log" 2>&1; then
        put "$m" apply_s "$T_oa_S"; put "$m" apply_kib "$T_oa_KIB"
        if ostree fsck --repo="$d/repo2" > /dev/null 2>&1 && ostree show --repo="$d/repo2" "$r2" > /dev/null 2>&1; then
            put "$m" verify "OK (fsck)"
        else
            put "$m" verify "FAIL"
        fi
    else
        note="${note}apply-offline failed: $(tail -n1 "$d/apply.log"); "
    fi
    put "$m" note "${note}generate only (commit of new took ${T_oc2_S}s, ${T_oc2_KIB} KiB); apply = apply-offline into a repo holding old (no checkout/deploy)"
}

corpus_stats() {
    begin_results corpus
    local k v
    while IFS=$'\t' read -r k v; do put corpus "$k" "$v"; done < "$S/perfile/stats.tsv"
    put corpus measured "$(date -u +%FT%TZ)"
    if [[ -f "$WORK/$C/.done" ]]; then put corpus created "$(cat "$WORK/$C/.done")"; fi
}

# ------------------------------------------------------------------ versions + main loop
# a run without ferry (e.g. BENCH_TOOLS=perfile) keeps the ferry line of the run that measured it
local ferry_line="ferry: $FERRY_STATUS ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
if ! want ferry && grep -q '^ferry: ' "$RES/versions.txt" 2>/dev/null; then
    ferry_line="$(grep -m1 '^ferry: ' "$RES/versions.txt")"
fi
{
    echo "rsync: $(rsync --version | head -n1)"
    echo "zstd: $(zstd --version)"
    echo "xdelta3: $(xdelta3 -V 2>&1 | head -n1)"
    echo "bsdiff: $(dpkg-query -W -f='${Version}' bsdiff 2>/dev/null || echo '?') (Debian package)"
    echo "ostree: $(ostree --version | awk '/Version/ {print $2}' | tr -d "'")"
    echo "tar: $(tar --version | head -n1)"
    echo "$ferry_line"
} > "$RES/versions.txt.new"
mv "$RES/versions.txt.new" "$RES/versions.txt"

for C in "${CORPORA[@]}"; do
    O="$WORK/$C/old"; N="$WORK/$C/new"; S="$SCR/$C"
    mkdir -p "$RES/$C" "$S/perfile"
    log "=== $C: warming the page cache, classifying changes"
    tar -C "$WORK/$C" -cf - old new > /dev/null 2>&1 || true
    python3 "$BENCH_DIR/perfile.py" classify "$O" "$N" "$S/perfile"
    corpus_stats
    for t in ferry rsync perfile tarzst ostree; do
        want "$t" || continue
        # in a subshell with errexit, not under `||` (which would switch errexit off inside)
        set +e
        ( set -e; "measure_$t" )
        local st=$?
        set -e
        [[ $st -eq 0 ]] || warn "$C: $t measurement failed (exit $st); its rows may be missing"
    done
    [[ -n "${KEEP_SCRATCH:-}" ]] || trash "$S/target" "$S/rsync/batch" "$S/ostree"
done
log "emptying $SCR/trash (the trees the timed runs replaced)"
rm -rf --one-file-system "$SCR/trash"

python3 "$BENCH_DIR/report.py" "$RES" "${BENCH_RESULTS_MD:-$BENCH_DIR/RESULTS.md}" "${CORPORA[@]}"
}

{ main "$@"; exit $?; }
