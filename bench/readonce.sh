#!/usr/bin/env bash
# How much of a bundle `ferry-apply apply` reads, and how long it takes from a slow medium
# (issue 18, "Read the bundle once").
#
#   sudo bash bench/readonce.sh OLD NEW
#   sudo bash bench/readonce.sh /work/benchwork/rootfs-up/old /work/benchwork/rootfs-up/new
#
# Builds OLD -> NEW (version 2), puts the bundle on an ext4 image on a loop device, and applies it
# to fresh copies of OLD (`cp -a`), each time right after remounting the image (so the bundle is
# read from the device, not the page cache), in a blkio cgroup that throttles reads from that
# device to RATE bytes/s (cgroup v1 `blkio.throttle.read_bps_device`, or v2 `io.max`): a USB 2.0
# stick reads about 30 MB/s. Every applied tree is compared with NEW (`rsync -ani --delete`,
# the state directory excluded). Reported per binary and run:
#   wall          elapsed seconds of the apply
#   dev_read      bytes the cgroup read from the loop device (what the stick delivered)
#   syscall_read  bytes read(2) returned from the bundle's descriptors (strace, a separate,
#                 unthrottled and uncounted run: what the applier asked for, cached or not)
#   json_read     `bundle_bytes_read` of `apply --json` (binaries that report it)
# and the same apply unthrottled, with the bundle in the page cache (wall only).
#
# Environment:
#   FERRY_BIN_DIR=DIR    ferry-build and ferry-apply to measure (default: target/release)
#   BEFORE_BIN_DIR=DIR   a second ferry-apply to compare with (e.g. a build of the commit before)
#   RATE=31457280        read limit in bytes/s (default 30 MiB/s)
#   RUNS=3               runs per binary and setting
#   MEM_LIMIT=BYTES      also cap the apply's memory cgroup (page cache included; v1 only), as on
#                        a small device where the bundle does not stay cached between two reads
#   WORK=DIR             scratch directory (default: a new one under /tmp), removed at the end
#   BUNDLE=FILE KEY=PREFIX  measure this bundle of OLD -> NEW (signed by PREFIX.secret, trusted as
#                        PREFIX.pub) instead of building one
# Needs root, losetup, mkfs.ext4, strace and rsync. Prints one TSV line per run and a summary.
set -euo pipefail

OLD="${1:?usage: readonce.sh OLD NEW}"
NEW="${2:?usage: readonce.sh OLD NEW}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FERRY_BIN_DIR:-$ROOT/target/release}"
BEFORE="${BEFORE_BIN_DIR:-}"
RATE="${RATE:-31457280}"
RUNS="${RUNS:-3}"
MEM_LIMIT="${MEM_LIMIT:-}"
WORK="${WORK:-$(mktemp -d /tmp/ferry-readonce.XXXXXX)}"
log() { printf '[readonce %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "readonce.sh: needs root (loop device, cgroup)" >&2; exit 2; }
for t in losetup mkfs.ext4 strace rsync; do
    command -v "$t" >/dev/null || { echo "readonce.sh: $t not found" >&2; exit 2; }
done

LOOP= MNT="$WORK/mnt" CG= CGMEM=
cleanup() {
    set +e
    mountpoint -q "$MNT" && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
    [ -n "$CGMEM" ] && rmdir "$CGMEM" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK" "$MNT"

if [ -n "${BUNDLE:-}" ]; then
    cp "$BUNDLE" "$WORK/b.ferry"
    cp "${KEY:?KEY=PREFIX goes with BUNDLE}.pub" "$WORK/k.pub"
else
    log "building $OLD -> $NEW with $BIN/ferry-build"
    "$BIN/ferry-build" keygen --unencrypted --out "$WORK/k" >/dev/null
    "$BIN/ferry-build" build --old "$OLD" --new "$NEW" --key "$WORK/k.secret" --version 2 \
        --out "$WORK/b.ferry" --json >"$WORK/build.json"
fi
SIZE=$(stat -c %s "$WORK/b.ferry")
log "bundle: $SIZE bytes"

# The bundle on its own block device.
truncate -s $((SIZE + (64 << 20))) "$WORK/img"
mkfs.ext4 -q -F "$WORK/img"
LOOP=$(losetup -f --show "$WORK/img")
DEV=$(lsblk -ndo MAJ:MIN "$LOOP" 2>/dev/null | tr -d ' ' || true)
[ -n "$DEV" ] || DEV="$(stat -Lc '%t' "$LOOP" | xargs -I{} printf '%d' 0x{}):$(stat -Lc '%T' "$LOOP" | xargs -I{} printf '%d' 0x{})"
mount "$LOOP" "$MNT"
cp "$WORK/b.ferry" "$MNT/b.ferry"
sync
BUNDLE="$MNT/b.ferry"

# A cgroup that throttles reads from the loop device, and how to read what it read.
if [ -d /sys/fs/cgroup/blkio ]; then
    CG=/sys/fs/cgroup/blkio/ferry-readonce-$$
    mkdir "$CG"
    echo "$DEV $RATE" >"$CG/blkio.throttle.read_bps_device"
    dev_read() { awk -v d="$DEV" '$1 == d && $2 == "Read" { n = $3 } END { print n + 0 }' "$CG/blkio.throttle.io_service_bytes"; }
elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io >/sys/fs/cgroup/cgroup.subtree_control
    CG=/sys/fs/cgroup/ferry-readonce-$$
    mkdir "$CG"
    echo "$DEV rbps=$RATE" >"$CG/io.max"
    dev_read() { awk -v d="$DEV" '$1 == d { for (i = 2; i <= NF; i++) if ($i ~ /^rbytes=/) { sub("rbytes=", "", $i); print $i; exit } } END { }' "$CG/io.stat"; }
else
    echo "readonce.sh: no blkio (v1) or io (v2) cgroup controller: cannot throttle" >&2
    exit 2
fi
if [ -n "$MEM_LIMIT" ]; then
    [ -d /sys/fs/cgroup/memory ] || { echo "readonce.sh: MEM_LIMIT needs the cgroup v1 memory controller" >&2; exit 2; }
    CGMEM=/sys/fs/cgroup/memory/ferry-readonce-$$
    mkdir "$CGMEM"
    echo "$MEM_LIMIT" >"$CGMEM/memory.limit_in_bytes"
fi

# A fresh copy of OLD.
fresh() { rm -rf "$WORK/t"; cp -a "$OLD" "$WORK/t"; }
# The bundle's page cache dropped: remount its filesystem.
uncache() { umount "$MNT"; mount "$LOOP" "$MNT"; }
check() {
    local d
    d=$(rsync -ani --delete --exclude=/.ferry "$NEW/" "$WORK/t/" | grep -cv '^\.d' || true)
    [ "$d" = 0 ] || { echo "readonce.sh: applied tree differs from NEW in $d entries" >&2; exit 1; }
}
apply_args() { echo apply "$BUNDLE" --target "$WORK/t" --trust "$WORK/k.pub" --json; }

# Bytes read(2) returned from descriptors opened on the bundle, from an strace log.
syscall_bytes() {
    python3 - "$1" "$BUNDLE" <<'EOF'
import re, sys
log, bundle = sys.argv[1], sys.argv[2]
fds, total, pending = set(), 0, {}
for line in open(log, errors="replace"):
    pid, _, rest = line.partition(" ")
    # A call another thread interrupted: "PID read(FD, <unfinished ...>", then later
    # "PID <... read resumed>..., N) = RESULT".
    m = re.match(r'(?:read|pread64)\((\d+),\s*<unfinished', rest)
    if m:
        pending[pid] = int(m.group(1))
        continue
    m = re.match(r'<\.\.\. (?:read|pread64) resumed>.* = (\d+)$', rest)
    if m:
        if pending.pop(pid, None) in fds:
            total += int(m.group(1))
        continue
    m = re.match(r'open(?:at2?)?\([^"]*"([^"]*)".* = (\d+)$', rest)
    if m:
        (fds.add if m.group(1) == bundle else fds.discard)(int(m.group(2)))
        continue
    m = re.match(r'close\((\d+)', rest)
    if m:
        fds.discard(int(m.group(1)))
        continue
    m = re.match(r'(?:read|pread64)\((\d+),.* = (\d+)$', rest)
    if m and int(m.group(1)) in fds:
        total += int(m.group(2))
print(total)
EOF
}

run_one() { # NAME APPLY-BINARY
    local name="$1" apply="$2" i
    # What read(2) delivered from the bundle (one strace run, not timed).
    fresh
    strace -f -qq -e trace=open,openat,openat2,read,pread64,close -e signal=none -o "$WORK/strace.log" \
        "$apply" $(apply_args) >/dev/null
    check
    local sys
    sys=$(syscall_bytes "$WORK/strace.log")
    for i in $(seq "$RUNS"); do
        fresh
        uncache
        local before after t0 t1 json
        before=$(dev_read)
        t0=$(date +%s.%N)
        json=$(sh -c 'echo $$ >"$1/cgroup.procs"; [ -z "$2" ] || echo $$ >"$2/cgroup.procs"; shift 2; exec "$@"' \
            sh "$CG" "$CGMEM" "$apply" $(apply_args))
        t1=$(date +%s.%N)
        after=$(dev_read)
        check
        local jr
        jr=$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("bundle_bytes_read", "-"))')
        printf '%s\tthrottled\t%s\t%.2f\t%s\t%s\t%s\t%s\n' "$name" "$i" "$(echo "$t1 - $t0" | bc)" \
            "$((after - before))" "$sys" "$jr" "$SIZE"
    done
    for i in $(seq "$RUNS"); do
        fresh
        cat "$WORK/b.ferry" >/dev/null
        local t0 t1
        t0=$(date +%s.%N)
        "$apply" apply "$WORK/b.ferry" --target "$WORK/t" --trust "$WORK/k.pub" --json >/dev/null
        t1=$(date +%s.%N)
        check
        printf '%s\tcached\t%s\t%.2f\t-\t-\t-\t%s\n' "$name" "$i" "$(echo "$t1 - $t0" | bc)" "$SIZE"
    done
}

printf 'binary\tsetting\trun\twall_s\tdev_read\tsyscall_read\tjson_read\tbundle_size\n'
[ -z "$BEFORE" ] || run_one before "$BEFORE/ferry-apply" | tee -a "$WORK/rows.tsv"
run_one after "$BIN/ferry-apply" | tee -a "$WORK/rows.tsv"
log "rate $RATE bytes/s${MEM_LIMIT:+, memory limit $MEM_LIMIT}; median wall per binary and setting:"
python3 - "$WORK/rows.tsv" <<'EOF' >&2
import statistics, sys, collections
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    f = l.rstrip("\n").split("\t")
    rows[(f[0], f[1])].append(f)
for (b, s), fs in rows.items():
    print(f"  {b:7} {s:9} wall {statistics.median(float(f[3]) for f in fs):7.2f} s  "
          f"dev_read {fs[0][4]:>10}  syscall_read {fs[0][5]:>10}  json_read {fs[0][6]:>10}  bundle {fs[0][7]}")
EOF
