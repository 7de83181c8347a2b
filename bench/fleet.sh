#!/usr/bin/env bash
# Fleet benchmark (issue 15): five successive releases of a real corpus, published into a ferry
# channel repository served by a local nginx, and N simulated targets spread over the versions
# (default 100: a fifth empty, a fifth at each of v1..v4), all updated to v5 with
# `ferry-apply update http://...`. Compared, in the same run, with
#   full    every target downloads v5's full bundle (its size x N),
#   rsync   an rsync daemon serving v5, each target `rsync -a --delete --stats` (and `-az`),
#   ostree  an archive repo with v1..v5 committed and static deltas from the same versions as
#           ferry's (plus from-empty), served by the same nginx; each target pulls into its own
#           bare-user repo that already holds its version.
#
#   bash bench/fleet.sh                      # everything (corpus download on the first run)
#   FLEET_TARGETS=10 bash bench/fleet.sh     # fewer targets
#   FLEET_TOOLS="rsync ostree" bash bench/fleet.sh
#
# Knobs: BENCH_WORK (caches and trees, default bench/work), FERRY_BIN_DIR (prebuilt ferry-build
# and ferry-apply; otherwise `cargo build --release`), FLEET_TARGETS (100), FLEET_DELTAS_FROM (4),
# FLEET_JOBS (publish --jobs, default nproc), FLEET_TOOLS ("ferry full rsync ostree"),
# FLEET_RSYNC_OPTS ("-a|-az": one rsync variant per |-separated option set), FLEET_VERIFY
# (all|first: check every target against v5, or the first of each starting version),
# FLEET_OSTREE_DELTAS (last: static deltas for v5 only, from v1..v4 and empty; all: for every
# release, from the same versions as ferry's deltas), FLEET_LIGHT_HISTORY (1: v2..v4 published
# with one delta and no full bundle), FLEET_RUN_DIR, FLEET_RESULTS_DIR.
# Results: $BENCH_WORK/results/fleet (or FLEET_RESULTS_DIR)/*.tsv and summary.md (fleet_report.py); the
# working trees of the run are in $BENCH_WORK/fleet-run or FLEET_RUN_DIR (removed at the start of
# the next run; give concurrent runs different FLEET_RUN_DIRs).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC_DIR="$(dirname "$BENCH_DIR")"
WORK="${BENCH_WORK:-$BENCH_DIR/work}"
CORPUS="$WORK/fleet"
RUN="${FLEET_RUN_DIR:-$WORK/fleet-run}"
RES="${FLEET_RESULTS_DIR:-$WORK/results/fleet}"
TARGETS="${FLEET_TARGETS:-100}"
DELTAS_FROM="${FLEET_DELTAS_FROM:-4}"
JOBS="${FLEET_JOBS:-$(nproc)}"
TOOLS=" ${FLEET_TOOLS:-ferry full rsync ostree} "
RSYNC_OPTS="${FLEET_RSYNC_OPTS:--a|-az}"
VERIFY="${FLEET_VERIFY:-all}"
OSTREE_DELTAS="${FLEET_OSTREE_DELTAS:-last}"
LIGHT_HISTORY="${FLEET_LIGHT_HISTORY:-0}"
CHANNEL=stable
NVERS=5

log() { printf '[fleet %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has() { [[ "$TOOLS" == *" $1 "* ]]; }
need() { # need CMD WHAT-FOR [DEBIAN-PACKAGE]
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ -n "${3:-}" && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing $3 (for $1)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$3" >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y "$3" >/dev/null 2>&1; } \
            || die "$1 is missing ($2) and apt-get install $3 failed"
        command -v "$1" >/dev/null 2>&1 && return 0
    fi
    die "$1 is missing (needed for $2${3:+; Debian package $3})"
}

[[ "$TARGETS" =~ ^[0-9]+$ && "$TARGETS" -ge 1 ]] || die "FLEET_TARGETS must be a positive integer"
[[ "$DELTAS_FROM" =~ ^[0-9]+$ && "$DELTAS_FROM" -ge 1 ]] || die "FLEET_DELTAS_FROM must be >= 1"
[[ "$VERIFY" == all || "$VERIFY" == first ]] || die "FLEET_VERIFY must be all or first"
[[ "$OSTREE_DELTAS" == all || "$OSTREE_DELTAS" == last ]] || die "FLEET_OSTREE_DELTAS must be all or last"
need python3 "the corpus download and the report"
need curl "checking the HTTP server"
need unzip "unpacking wheels" unzip
need rsync "the rsync baseline and tree comparison" rsync
need /usr/bin/time "timing (GNU time)" time
if has ferry || has full || has ostree; then need nginx "serving the repositories over HTTP" nginx-light; fi
if has ostree; then need ostree "the OSTree baseline" ostree; fi

# ---------------------------------------------------------------- corpus
# Release k is the k-th of five consecutive patch releases of each package, unpacked side by side
# (a site-packages directory): numpy 1.26.0-1.26.4, pandas 2.1.0-2.1.4, botocore and boto3
# 1.34.100-1.34.104 (boto3 1.34.N goes with botocore 1.34.N).
release_specs() { # release_specs K -> pip requirement specs of release K (1-based)
    local i=$(( $1 - 1 ))
    echo "numpy==1.26.$i pandas==2.1.$i botocore==1.34.$(( 100 + i )) boto3==1.34.$(( 100 + i ))"
}

corpus() {
    if [[ -f "$CORPUS/.done" ]]; then
        log "corpus: exists ($(cat "$CORPUS/.done"))"
        return
    fi
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is missing (corpus download)"
    rm -rf "$CORPUS"
    mkdir -p "$CORPUS/wheels"
    local t0 k spec whl
    t0=$(date +%s)
    for k in $(seq 1 $NVERS); do
        mkdir -p "$CORPUS/wheels/v$k" "$CORPUS/v$k"
        for spec in $(release_specs "$k"); do
            log "corpus v$k: pip download $spec"
            PIP_FIND_LINKS= python3 -m pip download --quiet --no-deps --only-binary=:all: \
                --python-version 3.11 --implementation cp --abi cp311 \
                --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
                -d "$CORPUS/wheels/v$k" "$spec" || die "pip download $spec failed (network? PyPI?)"
        done
        for whl in "$CORPUS/wheels/v$k"/*.whl; do
            unzip -q -o "$whl" -d "$CORPUS/v$k"
        done
        log "corpus v$k: $(du -sh "$CORPUS/v$k" | cut -f1), $(find "$CORPUS/v$k" -type f | wc -l) files"
    done
    echo "built $(date -u +%FT%TZ) in $(( $(date +%s) - t0 ))s" > "$CORPUS/.done"
}

# ---------------------------------------------------------------- helpers
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
bytes_of() { du -sb "$1" | cut -f1; }
# timed OUT ERR CMD...: runs CMD with stdout to OUT and stderr to ERR; prints "seconds max_rss_kib"
timed() {
    local out=$1 err=$2 tf rc=0; shift 2
    tf=$(mktemp)
    /usr/bin/time -f '%e %M' -o "$tf" "$@" > "$out" 2> "$err" || rc=$?
    if (( rc != 0 )); then tail -n 20 "$err" >&2; rm -f "$tf"; return $rc; fi
    tail -n 1 "$tf"; rm -f "$tf"
}
copy_tree() { # copy_tree SRC DST: an independent copy (no hard links shared with SRC)
    cp -a --reflink=auto "$1" "$2"
}
start_label() { (( $1 == 0 )) && echo empty || echo "v$1"; }
start_of() { echo $(( $1 % NVERS )); } # target index -> starting version (0 = empty)
# same_tree A B [rsync opts]: 0 if B has A's content (and the metadata the options name), the
# mtime of B itself excepted
same_tree() {
    local out
    out=$(rsync -n -i -r -l -c --delete ${3:-} --exclude=/.ferry "$1/" "$2/") || return 1
    # the target root's own mtime is not part of the tree: ferry leaves it to the filesystem
    out=$(printf '%s\n' "$out" | grep -v -x -F '.d..t...... ./' || true)
    [[ -z "$out" ]] || { printf '%s\n' "$out" | head -n 5 >&2; return 1; }
}
should_verify() { [[ "$VERIFY" == all ]] || (( $1 < NVERS )); }

# nginx with a private configuration serving $RUN/www on 127.0.0.1:$HTTP_PORT.
NGINX_DIR=""
start_nginx() {
    NGINX_DIR="$RUN/nginx"
    mkdir -p "$NGINX_DIR/tmp" "$RUN/www"
    HTTP_PORT=$(free_port)
    local user=""
    [[ $(id -u) == 0 ]] && user="user root root;"
    cat > "$NGINX_DIR/nginx.conf" <<EOF
$user
worker_processes 1;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/error.log warn;
events { worker_connections 256; }
http {
    default_type application/octet-stream;
    client_body_temp_path $NGINX_DIR/tmp/body;
    proxy_temp_path $NGINX_DIR/tmp/proxy;
    fastcgi_temp_path $NGINX_DIR/tmp/fastcgi;
    uwsgi_temp_path $NGINX_DIR/tmp/uwsgi;
    scgi_temp_path $NGINX_DIR/tmp/scgi;
    log_format fleet '\$msec \$status \$bytes_sent \$body_bytes_sent "\$request"';
    access_log $NGINX_DIR/access.log fleet;
    sendfile on;
    keepalive_timeout 30;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $RUN/www;
    }
}
EOF
    nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" || die "nginx did not start (see $NGINX_DIR/error.log)"
    local i
    for i in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && break
        sleep 0.1
    done
    log "nginx on 127.0.0.1:$HTTP_PORT serving $RUN/www"
}
access_lines() { [[ -f "$NGINX_DIR/access.log" ]] && wc -l < "$NGINX_DIR/access.log" || echo 0; }
# access_bytes FROM_LINE PREFIX -> total $bytes_sent of requests after line FROM_LINE for PREFIX
access_bytes() {
    tail -n +"$(( $1 + 1 ))" "$NGINX_DIR/access.log" \
        | awk -v p="$2" '{ split($0, q, "\""); split(q[2], r, " "); if (index(r[2], p) == 1) s += $3 } END { print s + 0 }'
}
access_requests() {
    tail -n +"$(( $1 + 1 ))" "$NGINX_DIR/access.log" \
        | awk -v p="$2" '{ split($0, q, "\""); split(q[2], r, " "); if (index(r[2], p) == 1) n++ } END { print n + 0 }'
}

RSYNCD_PID=""
cleanup() {
    [[ -n "$NGINX_DIR" && -f "$NGINX_DIR/nginx.pid" ]] && kill "$(cat "$NGINX_DIR/nginx.pid")" 2>/dev/null || true
    [[ -n "$RSYNCD_PID" ]] && kill "$RSYNCD_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# ---------------------------------------------------------------- ferry binaries
ferry_bins() {
    if [[ -n "${FERRY_BIN_DIR:-}" ]]; then
        B="$FERRY_BIN_DIR"
    else
        need cargo "building ferry (or set FERRY_BIN_DIR)"
        log "cargo build --release -p ferry-builder -p ferry-applier"
        (cd "$SRC_DIR" && nice -n 10 cargo build --release -q -p ferry-builder -p ferry-applier) \
            || die "cargo build failed (set FERRY_BIN_DIR to use prebuilt binaries)"
        B="${CARGO_TARGET_DIR:-$SRC_DIR/target}/release"
    fi
    [[ -x "$B/ferry-build" && -x "$B/ferry-apply" ]] || die "no ferry-build/ferry-apply in $B"
    "$B/ferry-build" publish --help >/dev/null 2>&1 || die "$B/ferry-build has no 'publish' command (issue 15)"
    "$B/ferry-apply" update --help >/dev/null 2>&1 || die "$B/ferry-apply has no 'update' command (issue 15)"
}

json_field() { # json_field FILE FIELD
    python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

# ---------------------------------------------------------------- ferry
ferry_setup() {
    mkdir -p "$RUN/ferry-repo" "$RUN/ferry-store" "$RUN/keys"
    "$B/ferry-build" keygen --out "$RUN/keys/release" --unencrypted >/dev/null 2>&1
    "$B/ferry-build" keygen --out "$RUN/keys/timestamp" --unencrypted >/dev/null 2>&1
    ln -sfn "$RUN/ferry-repo" "$RUN/www/ferry"
    : > "$RES/ferry-publish.tsv"
}

ferry_publish() { # ferry_publish K
    local k=$1 repo="$RUN/ferry-repo" store="$RUN/ferry-store" keys="$RUN/keys" t
    sync
    # FLEET_LIGHT_HISTORY=1: the releases between the first and the last get one delta (from the
    # previous release) and no full bundle: the targets' paths to the last are the same, the
    # publish of the last is the same, and a slow machine saves three full builds.
    local history=(--deltas-from "$DELTAS_FROM")
    if [[ "$LIGHT_HISTORY" == 1 ]] && (( k > 1 && k < NVERS )); then history=(--deltas-from 1 --no-full); fi
    log "ferry: publish v$k (${history[*]} --jobs $JOBS)"
    t=$(timed "$RUN/logs/publish-v$k.json" "$RUN/logs/publish-v$k.err" \
        "$B/ferry-build" publish --repo "$repo" --channel "$CHANNEL" --new "$CORPUS/v$k" \
        --version "$k" --key "$keys/release.secret" --timestamp-key "$keys/timestamp.secret" \
        "${history[@]}" --store "$store" --jobs "$JOBS" --json) \
        || die "publish v$k failed (see $RUN/logs/publish-v$k.err)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$k" ${t} "$(bytes_of "$repo")" "$(bytes_of "$store")" >> "$RES/ferry-publish.tsv"
    log "ferry: v$k published in ${t% *} s; repository $(du -sh "$repo" | cut -f1), store $(du -sh "$store" | cut -f1)"
    # The template of a target at v$k: an empty directory updated from the repository as a local
    # directory (a stick), so it holds ferry's state for v$k. Costs no network.
    if (( k < NVERS )); then
        mkdir -p "$RUN/tpl/ferry-v$k"
        "$B/ferry-apply" update "$repo" --target "$RUN/tpl/ferry-v$k" --trust "$keys/release.pub" \
            --channel "$CHANNEL" --json > "$RUN/logs/tpl-v$k.json" 2> "$RUN/logs/tpl-v$k.err" \
            || { cat "$RUN/logs/tpl-v$k.err" >&2; die "template v$k: update from the local repository failed"; }
        same_tree "$CORPUS/v$k" "$RUN/tpl/ferry-v$k" || die "template v$k differs from v$k"
    else
        ls -l "$repo/$CHANNEL/bundles" > "$RES/ferry-bundles.txt"
    fi
}

ferry_targets() {
    local i s t0 before j tgt ok url="http://127.0.0.1:$HTTP_PORT/ferry/"
    : > "$RES/ferry-targets.tsv"
    for (( i = 0; i < TARGETS; i++ )); do
        s=$(start_of "$i"); tgt="$RUN/t/ferry-$i"; j="$RUN/logs/ferry-$i.json"
        rm -rf "$RUN/t"; mkdir -p "$RUN/t"
        if (( s == 0 )); then mkdir "$tgt"; else copy_tree "$RUN/tpl/ferry-v$s" "$tgt"; fi
        before=$(access_lines)
        t0=$(date +%s.%N)
        "$B/ferry-apply" update "$url" --target "$tgt" --trust "$RUN/keys/release.pub" \
            --channel "$CHANNEL" --json > "$j" 2> "$RUN/logs/ferry-$i.err" \
            || { cat "$RUN/logs/ferry-$i.err" >&2; die "target $i ($(start_label "$s")): update failed"; }
        local secs; secs=$(echo "$(date +%s.%N) - $t0" | bc)
        ok=-
        if should_verify "$i"; then
            ok=yes; same_tree "$CORPUS/v$NVERS" "$tgt" "-p -t" || ok=NO
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$(start_label "$s")" "$(json_field "$j" bytes_downloaded)" \
            "$(access_bytes "$before" /ferry/)" "$(access_requests "$before" /ferry/)" "$secs" "$ok" \
            "$(python3 -c 'import json,sys; print(" ".join(p["file"] for p in json.load(open(sys.argv[1])).get("path") or []))' "$j")" \
            >> "$RES/ferry-targets.tsv"
        [[ "$ok" != NO ]] || log "ferry: target $i ($(start_label "$s")) DIFFERS from v$NVERS"
        if (( i % 10 == 9 )); then log "ferry: $(( i + 1 ))/$TARGETS targets updated"; fi
    done
    rm -rf "$RUN/t"
}

full_only() {
    local f
    f=$(ls "$RUN/ferry-repo/$CHANNEL/bundles/"v$NVERS.full.*.ferry 2>/dev/null | head -n1) \
        || true
    [[ -n "$f" ]] || { log "full: no full bundle of v$NVERS in the repository"; return; }
    printf '%s\t%s\t%s\n' "$(basename "$f")" "$(stat -c %s "$f")" "$TARGETS" > "$RES/full.tsv"
    # one real download, to count the HTTP overhead too
    local before; before=$(access_lines)
    curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/ferry/$CHANNEL/bundles/$(basename "$f")"
    printf 'http_bytes_one_download\t%s\n' "$(access_bytes "$before" /ferry/)" >> "$RES/full.tsv"
}

# ---------------------------------------------------------------- rsync
rsync_all() {
    local d="$RUN/rsyncd" port opts variant i s tgt out sent recv t0 secs ok
    mkdir -p "$d"
    port=$(free_port)
    local ids=""
    [[ $(id -u) == 0 ]] && ids=$'uid = root\ngid = root'
    cat > "$d/rsyncd.conf" <<EOF
pid file = $d/rsyncd.pid
log file = $d/rsyncd.log
use chroot = no
$ids
[v$NVERS]
    path = $CORPUS/v$NVERS
    read only = yes
EOF
    rsync --daemon --no-detach --config="$d/rsyncd.conf" --address=127.0.0.1 --port="$port" &
    RSYNCD_PID=$!
    for i in $(seq 50); do rsync "rsync://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
    log "rsync daemon on 127.0.0.1:$port serving v$NVERS"
    : > "$RES/rsync-targets.tsv"
    local IFS_SAVE="$IFS"
    IFS='|'; local variants=($RSYNC_OPTS); IFS="$IFS_SAVE"
    for opts in "${variants[@]}"; do
        variant="rsync ${opts}"
        for (( i = 0; i < TARGETS; i++ )); do
            s=$(start_of "$i"); tgt="$RUN/t/rsync-$i"
            rm -rf "$RUN/t"; mkdir -p "$RUN/t"
            if (( s == 0 )); then mkdir "$tgt"; else copy_tree "$CORPUS/v$s" "$tgt"; fi
            t0=$(date +%s.%N)
            # shellcheck disable=SC2086
            out=$(rsync $opts --delete --stats "rsync://127.0.0.1:$port/v$NVERS/" "$tgt/") \
                || die "target $i: rsync failed"
            secs=$(echo "$(date +%s.%N) - $t0" | bc)
            sent=$(printf '%s\n' "$out" | awk -F': ' '/^Total bytes sent/ {gsub(/,/, "", $2); print $2}')
            recv=$(printf '%s\n' "$out" | awk -F': ' '/^Total bytes received/ {gsub(/,/, "", $2); print $2}')
            ok=-
            if should_verify "$i"; then ok=yes; same_tree "$CORPUS/v$NVERS" "$tgt" "-p -t" || ok=NO; fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$i" "$(start_label "$s")" "$sent" "$recv" "$secs" "$ok" \
                >> "$RES/rsync-targets.tsv"
        done
        log "$variant: $TARGETS targets done"
    done
    kill "$RSYNCD_PID" 2>/dev/null || true; wait "$RSYNCD_PID" 2>/dev/null || true; RSYNCD_PID=""
    rm -rf "$RUN/t"
}

# ---------------------------------------------------------------- OSTree
declare -A REV
ostree_setup() {
    ostree --repo="$RUN/ostree-repo" init --mode=archive
    ln -sfn "$RUN/ostree-repo" "$RUN/www/ostree"
    : > "$RES/ostree-publish.tsv"
}

ostree_publish() { # ostree_publish K
    local k=$1 o="$RUN/ostree-repo" j t tc td
    sync
    tc=$(timed "$RUN/logs/ostree-commit-v$k.out" "$RUN/logs/ostree-commit-v$k.err" \
        ostree --repo="$o" commit --branch=fleet --subject="v$k" --tree=dir="$CORPUS/v$k") \
        || die "ostree commit v$k failed"
    REV[$k]=$(ostree --repo="$o" rev-parse fleet)
    # the same deltas as ferry's publish: from each of the last DELTAS_FROM versions and from
    # empty; for every release with FLEET_OSTREE_DELTAS=all, else for the last one only
    local dsecs=0 dmax=0 n=0
    if [[ "$OSTREE_DELTAS" == all ]] || (( k == NVERS )); then
        for (( j = k - DELTAS_FROM; j <= k; j++ )); do
            (( j >= 1 )) || continue
            local from=(--from="${REV[$j]:-}")
            (( j == k )) && from=(--empty)
            log "ostree: static-delta generate $( (( j == k )) && echo empty || echo "v$j") -> v$k"
            t=$(timed /dev/null "$RUN/logs/ostree-delta.err" \
                ostree --repo="$o" static-delta generate "${from[@]}" --to="${REV[$k]}") \
                || die "ostree static-delta ${from[*]} -> v$k failed"
            dsecs=$(echo "$dsecs + ${t% *}" | bc); n=$(( n + 1 ))
            if (( ${t#* } > dmax )); then dmax=${t#* }; fi
        done
    fi
    td=$(timed /dev/null "$RUN/logs/ostree-summary.err" ostree --repo="$o" summary -u) \
        || die "ostree summary failed"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$k" ${tc} "$dsecs" "$dmax" "$n" "${td% *}" >> "$RES/ostree-publish.tsv"
    log "ostree: v$k commit ${tc% *} s, $n deltas ${dsecs} s, repository $(du -sh "$o" | cut -f1)"
    # template of a target at v$k: a bare-user repo holding v$k, pulled from the local repo
    if (( k < NVERS )); then
        local tr="$RUN/tpl/ostree-v$k"
        ostree --repo="$tr" init --mode=bare-user
        ostree --repo="$tr" remote add --no-gpg-verify origin "http://127.0.0.1:$HTTP_PORT/ostree"
        ostree --repo="$tr" pull-local "$o" "${REV[$k]}" > /dev/null
        ostree --repo="$tr" refs --create=origin:fleet "${REV[$k]}"
    else
        ostree_delta_sizes
        printf 'repo\t%s\n' "$(bytes_of "$o")" > "$RES/ostree-sizes.tsv"
        printf 'deltas\t%s\n' "$(bytes_of "$o/deltas" 2>/dev/null || echo 0)" >> "$RES/ostree-sizes.tsv"
    fi
}

# What each static delta to v$NVERS weighs: superblock + parts (the files under deltas/) and the
# fallback objects it tells a client to fetch as loose objects: the least a pull through it costs.
ostree_delta_sizes() {
    local o="$RUN/ostree-repo" j name dir fb
    : > "$RES/ostree-deltas.tsv"
    for (( j = 0; j < NVERS; j++ )); do
        if (( j == 0 )); then name="${REV[$NVERS]}"; else [[ -n "${REV[$j]:-}" ]] || continue; name="${REV[$j]}-${REV[$NVERS]}"; fi
        ostree --repo="$o" static-delta show "$name" > "$RUN/logs/delta-$j.txt" 2>&1 || continue
        dir=$(python3 -c '
import base64, sys
def mb64(h): return base64.b64encode(bytes.fromhex(h)).decode().rstrip("=").replace("/", "_")
p = [mb64(x) for x in sys.argv[1].split("-")]
s = "-".join(p)
print(s[:2] + "/" + s[2:])' "$name")
        fb=$(awk -F'[:(]' '/^Total Fallback Size/ {gsub(/ /, "", $2); print $2}' "$RUN/logs/delta-$j.txt")
        printf '%s\t%s\t%s\n' "$(start_label "$j")" "$(bytes_of "$o/deltas/$dir")" "${fb:-0}" >> "$RES/ostree-deltas.tsv"
    done
}

ostree_targets() {
    local i s tr before t0 secs ok rev
    : > "$RES/ostree-targets.tsv"
    for (( i = 0; i < TARGETS; i++ )); do
        s=$(start_of "$i"); tr="$RUN/t/ostree-$i"
        rm -rf "$RUN/t"; mkdir -p "$RUN/t"
        if (( s == 0 )); then
            ostree --repo="$tr" init --mode=bare-user
            ostree --repo="$tr" remote add --no-gpg-verify origin "http://127.0.0.1:$HTTP_PORT/ostree"
        else
            copy_tree "$RUN/tpl/ostree-v$s" "$tr"
        fi
        before=$(access_lines)
        t0=$(date +%s.%N)
        ostree --repo="$tr" pull origin fleet > "$RUN/logs/ostree-$i.out" 2>&1 \
            || { cat "$RUN/logs/ostree-$i.out" >&2; die "target $i: ostree pull failed"; }
        secs=$(echo "$(date +%s.%N) - $t0" | bc)
        rev=$(ostree --repo="$tr" rev-parse origin:fleet)
        ok=-
        [[ "$rev" == "${REV[$NVERS]}" ]] || ok=NO
        if [[ "$ok" != NO ]] && should_verify "$i"; then
            ok=yes
            ostree --repo="$tr" checkout -U origin:fleet "$tr.tree" >/dev/null
            same_tree "$CORPUS/v$NVERS" "$tr.tree" "-p" || ok=NO
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$(start_label "$s")" "$(access_bytes "$before" /ostree/)" \
            "$(access_requests "$before" /ostree/)" "$secs" "$ok" >> "$RES/ostree-targets.tsv"
        if (( i % 10 == 9 )); then log "ostree: $(( i + 1 ))/$TARGETS targets pulled"; fi
    done
    rm -rf "$RUN/t"
}

# ---------------------------------------------------------------- main
# (a function, called on the last line with its exit: bash has read all of it before it starts,
# so editing the file mid-run is safe)
main() {
    need bc "arithmetic on times" bc
    corpus
    rm -rf "$RUN"
    mkdir -p "$RUN/logs" "$RUN/www" "$RUN/tpl" "$RES"
    # only the measured tools' results are replaced: a partial run (FLEET_TOOLS=...) keeps the others
    local tool
    for tool in $TOOLS; do
        case $tool in
            ferry) rm -f "$RES"/ferry-*.tsv "$RES"/ferry-bundles.txt ;;
            full) rm -f "$RES"/full.tsv ;;
            rsync) rm -f "$RES"/rsync-*.tsv ;;
            ostree) rm -f "$RES"/ostree-*.tsv ;;
            *) die "unknown tool '$tool' in FLEET_TOOLS (ferry full rsync ostree)" ;;
        esac
        printf 'date\t%s\nloadavg_start\t%s\n' "$(date -u +'%F %H:%M UTC')" "$(cut -d' ' -f1-3 /proc/loadavg)" \
            > "$RES/when-$tool.tsv"
    done
    {
        echo "date	$(date -u +'%F %H:%M UTC')"
        echo "targets	$TARGETS"
        echo "deltas_from	$DELTAS_FROM"
        echo "jobs	$JOBS"
        echo "ostree_deltas	$OSTREE_DELTAS"
        echo "light_history	$LIGHT_HISTORY"
        echo "loadavg_start	$(cut -d' ' -f1-3 /proc/loadavg)"
        for k in $(seq 1 $NVERS); do
            echo "v$k	$(release_specs "$k")	$(bytes_of "$CORPUS/v$k")	$(find "$CORPUS/v$k" -type f | wc -l)"
        done
        echo "cpu	$(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
        echo "nginx	$(nginx -v 2>&1 | sed 's/.*: //')"
        echo "rsync	$(rsync --version | head -n1)"
        command -v ostree >/dev/null && echo "ostree	$(ostree --version | awk -F"'" '/Version/ {print $2}')"
    } > "$RES/meta.tsv"

    if has ferry || has full || has ostree; then start_nginx; fi
    FERRY=0
    if has ferry || has full; then
        ferry_bins
        for tool in ferry full; do
            if has $tool; then
                printf 'ferry\t%s\n' "$(git -C "$SRC_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
                    >> "$RES/when-$tool.tsv"
            fi
        done
        ferry_setup
        FERRY=1
    fi
    if has ostree; then ostree_setup; fi
    # publish both, release by release, so both see the same machine load
    for k in $(seq 1 $NVERS); do
        if (( FERRY )); then ferry_publish "$k"; fi
        if has ostree; then ostree_publish "$k"; fi
    done
    echo "loadavg_after_publish	$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/meta.tsv"
    if (( FERRY )); then
        printf 'repo\t%s\nstore\t%s\n' "$(bytes_of "$RUN/ferry-repo")" "$(bytes_of "$RUN/ferry-store")" > "$RES/ferry-sizes.tsv"
        if has full; then full_only; fi
        if has ferry; then ferry_targets; fi
    fi
    if has ostree; then ostree_targets; fi
    if has rsync; then rsync_all; fi
    echo "loadavg_end	$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/meta.tsv"
    python3 "$BENCH_DIR/fleet_report.py" "$RES" | tee "$RES/summary.md"
}

main "$@"; exit $?
