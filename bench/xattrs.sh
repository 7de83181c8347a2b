#!/usr/bin/env bash
# Extended attributes and sparse files: the rootfs-attrs corpus and its measurement.
#
#   bash bench/xattrs.sh            # make bench/work/rootfs-attrs (from the rootfs corpus) and measure it
#   bash bench/xattrs.sh corpus     # only make the corpus
#   bash bench/xattrs.sh measure    # only measure (corpus must exist)
#
# The corpus (from bench/work/rootfs, which bench/corpora.sh rootfs makes):
#   - iputils-ping and uidmap (Debian bookworm .debs, `apt-get download`) unpacked with
#     `dpkg-deb -x` into both sides, so that binaries which ship file capabilities exist
#     (minbase has none); setcap cap_net_raw+ep usr/bin/ping, cap_setuid+ep usr/bin/newuidmap,
#     cap_setgid+ep usr/bin/newgidmap, on both sides
#   - a POSIX ACL on var/log (group adm r-x, access and default; systemd's tmpfiles rule for the
#     journal), both sides
#   - security.selinux on every file, directory, symlink and device node (xattrs_tree.py label:
#     file_contexts-like rules, same label for a path on both sides)
#   - var/lib/images/disk.img: sparse, 2 GiB logical, 4.5 MiB of data in 4 extents (OLD);
#     NEW: 8 blocks of 4 KiB rewritten and one new 256 KiB extent
#   - rootfs-attrs/noimg-{old,new}: the same trees without var/lib/images (the sparse file's cost)
#
# Measured (BENCH_RUNS runs each, median): ferry-build --xattrs auto and --xattrs none on both
# pairs, ferry-apply onto a fresh cp -a of old, rsync -aHAXS (and -aHS) --only-write-batch
# (+ zstd -19 --long=27) and --read-batch. Every applied tree is checked against new: content
# (rsync -rlpgoD -c -n, as run.sh), every attribute (xattrs_tree.py dump, diffed), and
# rsync -naHAXS -c --itemize-changes (logged). Results: bench/work/xattrs-results/ and the
# section "Extended attributes and sparse files (rootfs-attrs)" of bench/RESULTS.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH_DIR")"
WORK="${BENCH_WORK:-$BENCH_DIR/work}"
C="$WORK/rootfs-attrs"
R="$WORK/xattrs-results"
S="$WORK/scratch/rootfs-attrs"
RUNS="${BENCH_RUNS:-3}"
MD="${BENCH_RESULTS_MD:-$BENCH_DIR/RESULTS.md}"
PY="$BENCH_DIR/xattrs_tree.py"
FB="${FERRY_BIN_DIR:-$ROOT/target/release}/ferry-build"
FA="${FERRY_BIN_DIR:-$ROOT/target/release}/ferry-apply"
SECTION="Extended attributes and sparse files (rootfs-attrs)"

log() { printf '[xattrs %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

main() {
[[ $EUID -eq 0 ]] || die "run as root (security.* attributes, capabilities, device nodes)"
local what="${1:-all}"
for pair in setfattr:attr setcap:libcap2-bin setfacl:acl rsync:rsync zstd:zstd /usr/bin/time:time; do
    command -v "${pair%%:*}" > /dev/null 2>&1 && continue
    log "installing ${pair#*:}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pair#*:}" > /dev/null 2>&1 || {
        apt-get update > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pair#*:}" > /dev/null
    } || die "cannot install ${pair#*:}"
done
case $what in
    corpus) make_corpus ;;
    measure) measure ;;
    all) make_corpus; measure ;;
    *) die "usage: $0 [corpus|measure]" ;;
esac
}

# ------------------------------------------------------------------ corpus
make_corpus() {
    if [[ -f "$C/.done" ]]; then log "rootfs-attrs exists ($(cat "$C/.done")); rm -rf $C to rebuild"; return 0; fi
    [[ -f "$WORK/rootfs/.done" ]] || die "no rootfs corpus: bash bench/corpora.sh rootfs"
    local t0; t0=$(date +%s)
    rm -rf "$C"; mkdir -p "$C/debs"
    log "cp -a rootfs/{old,new}"
    cp -a "$WORK/rootfs/old" "$C/old"
    cp -a "$WORK/rootfs/new" "$C/new"

    # capability binaries: minbase ships none, so unpack the two packages that do into both sides
    log "apt-get download iputils-ping uidmap; dpkg-deb -x into old and new"
    if (cd "$C/debs" && apt-get download iputils-ping uidmap > download.log 2>&1); then
        local deb side x="$C/debs/x" top
        rm -rf "$x"; mkdir -p "$x"
        for deb in "$C"/debs/*.deb; do
            dpkg-deb -x "$deb" "$x"
            echo "$(basename "$deb")" >> "$C/debs/unpacked.txt"
        done
        # bookworm is merged-/usr (bin -> usr/bin): move the packages' /bin, /sbin, /lib below usr/
        # first, so that copying them in does not replace the tree's symlinks with directories
        for top in bin sbin lib; do
            if [[ -d "$x/$top" && ! -L "$x/$top" ]]; then
                mkdir -p "$x/usr/$top"; cp -a "$x/$top/." "$x/usr/$top/"; rm -rf "${x:?}/$top"
            fi
        done
        for side in old new; do cp -a "$x/usr/." "$C/$side/usr/"; done
        [[ -z "$(ls -A "$x" | grep -vx usr)" ]] || log "WARNING: package files outside usr/ not copied: $(ls -A "$x" | grep -vx usr | tr '\n' ' ')"
        rm -rf "$x"
    else
        log "WARNING: apt-get download failed ($(tail -n1 "$C/debs/download.log")): capabilities only where binaries exist"
    fi

    local side f
    for side in old new; do
        local t="$C/$side"
        # ACL first (it is a system.* attribute; labels are set after, on every entry)
        if [[ -d "$t/var/log" ]]; then
            setfacl -m g:adm:r-x -m d:g:adm:r-x "$t/var/log"
        fi
        python3 "$PY" label "$t"
        : > "$C/caps-$side.txt"
        for f in usr/bin/ping:cap_net_raw+ep usr/bin/newuidmap:cap_setuid+ep usr/bin/newgidmap:cap_setgid+ep \
                 usr/bin/arping:cap_net_raw+ep usr/bin/mtr-packet:cap_net_raw+ep; do
            local p="$t/${f%%:*}"
            if [[ -f "$p" && ! -L "$p" ]]; then setcap "${f#*:}" "$p"; echo "${f%%:*} ${f#*:}" >> "$C/caps-$side.txt"; fi
        done
    done

    log "noimg-{old,new}: copies before the image is added"
    cp -a "$C/old" "$C/noimg-old"
    cp -a "$C/new" "$C/noimg-new"

    log "sparse image var/lib/images/disk.img (2 GiB logical)"
    python3 "$PY" image "$C/old/var/lib/images/disk.img"
    touch -d '2026-11-01 00:00:00' "$C/old/var/lib/images/disk.img"
    mkdir -p "$C/new/var/lib/images"
    cp -a --sparse=always "$C/old/var/lib/images/disk.img" "$C/new/var/lib/images/disk.img"
    python3 "$PY" image-edit "$C/new/var/lib/images/disk.img"
    touch -d '2026-11-20 00:00:00' "$C/new/var/lib/images/disk.img"
    for side in old new; do
        chmod 0700 "$C/$side/var/lib/images"
        python3 "$PY" label-one "$C/$side" var/lib/images
        python3 "$PY" label-one "$C/$side" var/lib/images/disk.img
        touch -d '2026-11-01 00:00:00' "$C/$side/var/lib/images"
        python3 "$PY" extents "$C/$side/var/lib/images/disk.img" > "$C/image-$side.txt"
    done
    # the image's directory was added to var/lib: give var/lib back its mtime (same on both sides)
    for side in old new; do touch -r "$WORK/rootfs/$side/var/lib" "$C/$side/var/lib"; done
    echo "built $(date -u +%FT%TZ) in $(( $(date +%s) - t0 ))s" > "$C/.done"
    log "done: $(cat "$C/.done")"
}

# ------------------------------------------------------------------ measurement
# tm NAME SETUP CMD... : RUNS runs of CMD under /usr/bin/time, SETUP (eval'd) before each;
# sets T_NAME (median wall s), A_NAME (all runs), K_NAME (largest peak RSS KiB). The first run's
# stdout/stderr go to $LOGF (if set), the others to /dev/null.
tm() {
    local name=$1 setup=$2; shift 2
    local all=() cpu=() kib=0 i tf w u sy k
    for ((i = 0; i < RUNS; i++)); do
        eval "$setup"
        tf=$(mktemp)
        if ((i == 0)); then
            /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" > "${LOGF:-/dev/null}" 2> "${LOGF:-/dev/null}.err" || { rm -f "$tf"; return 1; }
        else
            /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" > /dev/null 2>&1 || { rm -f "$tf"; return 1; }
        fi
        read -r w u sy k < <(tail -n1 "$tf"); rm -f "$tf"
        all+=("$w")
        cpu+=("$(python3 -c "print(f'{$u + $sy:.2f}')")")
        if (( k > kib )); then kib=$k; fi
    done
    printf -v "A_$name" '%s' "${all[*]}"
    printf -v "AC_$name" '%s' "${cpu[*]}"
    printf -v "K_$name" '%s' "$kib"
    printf -v "T_$name" '%s' "$(printf '%s\n' "${all[@]}" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')"
    printf -v "C_$name" '%s' "$(printf '%s\n' "${cpu[@]}" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')"
}

fresh() { # fresh SRC DST: cp -a (keeps attributes and holes), flushed before anything is timed
    if [[ -e "$2" ]]; then mkdir -p "$S/trash"; mv "$2" "$(mktemp -d "$S/trash/t.XXXXXX")/"; fi
    cp -a "$1" "$2"
    sync
}

# check NEW TARGET DIR -> "content;xattrs;itemize;image" summary, logs in DIR
check() {
    local n=$1 t=$2 d=$3
    rsync -rlpgoD --numeric-ids -c -n --delete --itemize-changes --exclude=/.ferry "$n/" "$t/" > "$d/verify-content.log" 2>&1 || true
    local c; c=$(grep -cv '^$' "$d/verify-content.log" || true)
    python3 "$PY" dump "$n" > "$d/xattrs-new.txt"
    python3 "$PY" dump "$t" .ferry > "$d/xattrs-target.txt"
    local x; x=$(diff "$d/xattrs-new.txt" "$d/xattrs-target.txt" | grep -c '^[<>]' || true)
    rsync -naHAXS --numeric-ids -c --delete --itemize-changes --exclude=/.ferry "$n/" "$t/" > "$d/verify-itemize.log" 2>&1 || true
    local i; i=$(grep -cv '^$' "$d/verify-itemize.log" || true)
    local img="-"
    if [[ -f "$t/var/lib/images/disk.img" ]]; then
        img=$(python3 "$PY" extents "$t/var/lib/images/disk.img" | sed 's/.*allocated=//')
    fi
    echo "$c;$x;$i;$img"
}

put() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$R/results.tsv"; }

measure_ferry() { # measure_ferry TREE(main|noimg) XATTRS
    local tree=$1 xa=$2 o n
    if [[ $tree == main ]]; then o="$C/old"; n="$C/new"; else o="$C/noimg-old"; n="$C/noimg-new"; fi
    local m="ferry --xattrs $xa|$tree" d="$S/ferry-$tree-$xa"
    mkdir -p "$d"
    log "$tree: ferry build --xattrs $xa"
    LOGF="$d/build.json" tm fb : "$FB" build --old "$o" --new "$n" --key "$S/keys/bench.secret" --version 2 \
        --out "$d/bundle.ferry" --xattrs "$xa" --json || { put "$m" note "build failed: $(tail -n1 "$d/build.json.err")"; return 0; }
    put "$m" size "$(stat -c %s "$d/bundle.ferry")"
    # the bundle is a tar: its members' exact sizes (the size above is in 512-byte blocks)
    put "$m" members "$(tar -tvf "$d/bundle.ferry" | awk '{sub(".*/", "", $6); printf "%s=%s ", $6, $3}')"
    put "$m" build_s "$T_fb"; put "$m" build_kib "$K_fb"; put "$m" build_cpu "$C_fb"
    log "$tree: ferry apply ($xa)"
    LOGF="$d/apply.json" tm fa 'fresh "$o" "$S/target"' "$FA" apply "$d/bundle.ferry" --target "$S/target" \
        --trust "$S/keys/bench.pub" --json || { put "$m" note "apply failed: $(tail -n2 "$d/apply.json.err" | tr '\n' ' ')"; return 0; }
    put "$m" apply_s "$T_fa"; put "$m" apply_kib "$K_fa"; put "$m" apply_cpu "$C_fa"
    put "$m" runs "wall: build ${A_fb} s, apply ${A_fa} s; CPU: build ${AC_fb} s, apply ${AC_fa} s"
    put "$m" check "$(check "$n" "$S/target" "$d")"
    python3 - "$m" "$d/build.json" "$d/apply.json" <<'EOF' >> "$R/results.tsv" || true
import json, sys
for which, p in zip(("build", "apply"), sys.argv[2:]):
    try:
        t = open(p).read(); doc = json.JSONDecoder().raw_decode(t[t.find("{"):])[0]
    except Exception:
        continue
    def flat(x, pre=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{pre}{k}.")
        elif not isinstance(x, list):
            yield pre[:-1], x
    for k, v in flat(doc):
        if any(s in k for s in ("xattr", "sparse", "bytes", "duration", "commit_window", "stage_ms", "entries")):
            print(f"{sys.argv[1]}\tjson\t{which}.{k}={v}")
EOF
}

measure_rsync() { # measure_rsync TREE OPTS-LABEL OPTS...
    local tree=$1 lab=$2; shift 2
    local opts=("$@" --numeric-ids --delete --no-whole-file) o n
    if [[ $tree == main ]]; then o="$C/old"; n="$C/new"; else o="$C/noimg-old"; n="$C/noimg-new"; fi
    local m="rsync $lab batch|$tree" mz="rsync $lab batch + zstd -19|$tree" d="$S/rsync-$tree-$lab"
    mkdir -p "$d"
    log "$tree: rsync $lab --only-write-batch"
    fresh "$o" "$S/target"
    tm rw : rsync "${opts[@]}" --only-write-batch="$d/batch" "$n/" "$S/target/" || { put "$m" note "write-batch failed"; return 0; }
    tm rz : zstd -q -f -19 --long=27 -T0 "$d/batch" -o "$d/batch.zst"
    tm rd : zstd -q -f -d --long=27 "$d/batch.zst" -o "$d/batch.dec"
    rm -f "$d/batch.dec"
    log "$tree: rsync $lab --read-batch"
    tm rr 'fresh "$o" "$S/target"' rsync "${opts[@]}" --read-batch="$d/batch" "$S/target/" || { put "$m" note "read-batch failed"; return 0; }
    local ck; ck=$(check "$n" "$S/target" "$d")
    put "$m" size "$(stat -c %s "$d/batch")"; put "$m" build_s "$T_rw"; put "$m" apply_s "$T_rr"
    put "$m" build_kib "$K_rw"; put "$m" apply_kib "$K_rr"; put "$m" check "$ck"
    put "$m" build_cpu "$C_rw"; put "$m" apply_cpu "$C_rr"
    put "$m" runs "wall: write-batch ${A_rw} s, read-batch ${A_rr} s; CPU: ${AC_rw} s, ${AC_rr} s"
    put "$mz" size "$(stat -c %s "$d/batch.zst")"
    put "$mz" build_s "$(python3 -c "print(f'{$T_rw + $T_rz:.2f}')")"
    put "$mz" apply_s "$(python3 -c "print(f'{$T_rd + $T_rr:.2f}')")"
    put "$mz" build_kib "$(( K_rw > K_rz ? K_rw : K_rz ))"; put "$mz" apply_kib "$(( K_rd > K_rr ? K_rd : K_rr ))"
    put "$mz" check "$ck"
    put "$mz" build_cpu "$(python3 -c "print(f'{$C_rw + $C_rz:.2f}')")"
    put "$mz" apply_cpu "$(python3 -c "print(f'{$C_rd + $C_rr:.2f}')")"
    put "$mz" runs "wall: zstd ${A_rz} s, zstd -d ${A_rd} s; CPU: ${AC_rz} s, ${AC_rd} s (+ write-/read-batch as above)"
    rm -f "$d/batch" "$d/batch.zst"
}

measure() {
    [[ -f "$C/.done" ]] || die "no rootfs-attrs corpus: bash bench/xattrs.sh corpus"
    [[ -x "$FB" && -x "$FA" ]] || die "ferry binaries missing ($FB, $FA): cargo build --release -p ferry-builder -p ferry-applier"
    rm -rf "$S" "$R"; mkdir -p "$S/keys" "$R"
    "$FB" keygen --unencrypted --out "$S/keys/bench" > "$S/keys/keygen.log" 2>&1 || die "keygen failed"
    log "warming the page cache"
    tar -C "$C" --sparse -cf - old new noimg-old noimg-new > /dev/null 2>&1 || true
    {
        echo "measured	$(date -u +%FT%TZ)"
        echo "created	$(cat "$C/.done")"
        echo "ferry	$(git -C "$ROOT" rev-parse --short HEAD) (binaries of $(date -u -r "$FB" '+%F %H:%M UTC'))"
        echo "rsync	$(rsync --version | head -n1)"
        echo "zstd	$(zstd --version)"
        echo "machine	$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $(df -T "$WORK" | awk 'NR==2 {print $2}')"
        echo "runs	$RUNS"
        echo "load	$(cut -d' ' -f1-3 /proc/loadavg)"
        local side
        for side in old new; do
            python3 "$PY" count "$C/$side" | sed "s/^/count.$side./"
            echo "image.$side	$(cat "$C/image-$side.txt")"
            echo "caps.$side	$(tr '\n' ',' < "$C/caps-$side.txt")"
        done
        echo "debs	$(tr '\n' ' ' < "$C/debs/unpacked.txt" 2>/dev/null)"
    } > "$R/corpus.tsv"
    : > "$R/results.tsv"
    local x
    for x in auto none; do measure_ferry main "$x"; done
    for x in auto none; do measure_ferry noimg "$x"; done
    measure_rsync main -aHAXS -aHAXS
    measure_rsync noimg -aHAXS -aHAXS
    measure_rsync main -aHS -aHS
    log "emptying $S/trash"
    rm -rf --one-file-system "$S/trash" "$S/target"
    python3 "$BENCH_DIR/xattrs_report.py" "$R" "$MD"
}

{ main "$@"; exit $?; }
