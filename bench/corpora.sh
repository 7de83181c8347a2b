#!/usr/bin/env bash
# Create the benchmark corpora under bench/work/ (gitignored).
#
#   bash bench/corpora.sh                 # all corpora
#   bash bench/corpora.sh synth commit10k # only some
#
# Corpora: wheels rootfs synth commit10k. Each corpus lives in
# bench/work/NAME/{old,new}; a finished corpus has bench/work/NAME/.done and is
# skipped on later runs (delete the directory to rebuild it). A half-built
# corpus (no .done) is removed and rebuilt.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${BENCH_WORK:-$BENCH_DIR/work}"
mkdir -p "$WORK"

log() { printf '[corpora %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_apt() { # need_apt CMD PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null; then
        apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null \
            || die "cannot install $2"
    fi
}

# begin NAME -> 0 if the corpus must be built (and prepares an empty dir), 1 if done already
begin() {
    local d="$WORK/$1"
    if [[ -f "$d/.done" ]]; then
        log "$1: exists ($(cat "$d/.done")), skipping"
        return 1
    fi
    if [[ -e "$d" ]]; then
        log "$1: removing incomplete previous attempt"
        rootfs_umount_all "$d" || true
        rm -rf --one-file-system "$d"
    fi
    mkdir -p "$d"
    return 0
}
finish() { # finish NAME START_EPOCH
    local secs=$(( $(date +%s) - $2 ))
    echo "built $(date -u +%FT%TZ) in ${secs}s" > "$WORK/$1/.done"
    log "$1: done in ${secs}s ($(du -sh "$WORK/$1/old" | cut -f1) old, $(du -sh "$WORK/$1/new" | cut -f1) new)"
}

# ---------------------------------------------------------------- (a) wheels
WHEELS_OLD=(numpy==1.26.3 scipy==1.11.3 pandas==2.1.3)
WHEELS_NEW=(numpy==1.26.4 scipy==1.11.4 pandas==2.1.4)

corpus_wheels() {
    begin wheels || return 0
    local t0; t0=$(date +%s)
    local d="$WORK/wheels"
    need_apt unzip unzip
    local PIP=(python3 -m pip)
    "${PIP[@]}" --version >/dev/null 2>&1 || die "python3 -m pip not available"
    for side in old new; do
        local -n specs="WHEELS_${side^^}"
        mkdir -p "$d/dl-$side" "$d/$side"
        for spec in "${specs[@]}"; do
            log "wheels/$side: pip download $spec"
            # PIP_FIND_LINKS may point at a local wheel cache; ignore it so we
            # get exactly the PyPI artifact.
            PIP_FIND_LINKS= "${PIP[@]}" download --quiet --no-deps --only-binary=:all: \
                --python-version 3.11 --implementation cp --abi cp311 \
                --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
                -d "$d/dl-$side" "$spec" || die "pip download $spec failed"
        done
        for whl in "$d/dl-$side"/*.whl; do
            log "wheels/$side: unzip $(basename "$whl")"
            unzip -q -o "$whl" -d "$d/$side"
        done
    done
    mkdir -p "$d/wheels"
    mv "$d"/dl-old/*.whl "$d"/dl-new/*.whl "$d/wheels/" && rmdir "$d/dl-old" "$d/dl-new"
    finish wheels "$t0"
}

# ---------------------------------------------------------------- (b) rootfs
detect_mirror() {
    if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local m
    m=$( { grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
           grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
               | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } \
         | grep -E '/debian/?$' | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

ROOTFS_MOUNTS=()
rootfs_umount_all() { # unmount anything still mounted below $1 (deepest first)
    local base; base=$(realpath -m "$1")
    local mp
    for mp in $(awk -v b="$base/" 'index($2, b) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$mp" 2>/dev/null || true
    done
}

corpus_rootfs() {
    begin rootfs || return 0
    local t0; t0=$(date +%s)
    local d="$WORK/rootfs"
    need_apt debootstrap debootstrap
    local mirror; mirror=$(detect_mirror)
    local secmirror="${mirror%/debian}/debian-security"
    log "rootfs: mirror $mirror (security: $secmirror)"

    log "rootfs: debootstrap --variant=minbase bookworm old (log: $d/debootstrap.log)"
    if ! debootstrap --variant=minbase bookworm "$d/old" "$mirror" > "$d/debootstrap.log" 2>&1; then
        tail -n 30 "$d/debootstrap.log" >&2
        [[ -f "$d/old/debootstrap/debootstrap.log" ]] && tail -n 30 "$d/old/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (see $d/debootstrap.log)"
    fi
    # Same clean-up on both sides: no downloaded .debs, no apt index files
    # (they are not part of an OS image update), no debootstrap leftovers.
    rm -rf "$d/old/var/cache/apt/archives/"*.deb "$d/old/var/lib/apt/lists/"* "$d/old/debootstrap"
    mkdir -p "$d/old/var/lib/apt/lists/partial"

    log "rootfs: cp -a old new"
    cp -a "$d/old" "$d/new"
    local n="$d/new"
    cat > "$n/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $secmirror bookworm-security main
EOF
    cp -L /etc/resolv.conf "$n/etc/resolv.conf" 2>/dev/null || true
    # no daemons started inside the chroot
    printf '#!/bin/sh\nexit 101\n' > "$n/usr/sbin/policy-rc.d"; chmod 755 "$n/usr/sbin/policy-rc.d"

    trap 'rootfs_umount_all "'"$n"'"' EXIT
    mount -t proc proc "$n/proc"
    mount --bind /dev "$n/dev"
    mount --bind /dev/pts "$n/dev/pts" 2>/dev/null || true
    mount -t sysfs sysfs "$n/sys" 2>/dev/null || true
    log "rootfs: chroot new: apt-get update && upgrade && install curl less procps (log: $d/chroot.log)"
    if ! chroot "$n" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C \
        /bin/sh -ec 'apt-get update
                     apt-get -y -o Dpkg::Options::=--force-confold upgrade
                     apt-get -y -o Dpkg::Options::=--force-confold install --no-install-recommends curl less procps
                     apt-get clean' > "$d/chroot.log" 2>&1; then
        tail -n 30 "$d/chroot.log" >&2
        die "apt-get in chroot failed (see $d/chroot.log)"
    fi
    rootfs_umount_all "$n"
    trap - EXIT
    rm -f "$n/usr/sbin/policy-rc.d"
    # resolv.conf back to what debootstrap left in old; same apt clean-up as old
    if [[ -e "$d/old/etc/resolv.conf" ]]; then cp -a "$d/old/etc/resolv.conf" "$n/etc/resolv.conf"; else rm -f "$n/etc/resolv.conf"; fi
    rm -rf "$n/var/cache/apt/archives/"*.deb "$n/var/lib/apt/lists/"* "$n/var/cache/apt/"*.bin
    mkdir -p "$n/var/lib/apt/lists/partial"
    grep -E '^(Inst|Setting up|Unpacking) ' "$d/chroot.log" > "$d/changes.txt" || true
    log "rootfs: $(grep -c '^Unpacking ' "$d/chroot.log" || true) packages unpacked in new"
    finish rootfs "$t0"
}

# ---------------------------------------------------------------- (c)+(d) generated
corpus_synth() {
    begin synth || return 0
    local t0; t0=$(date +%s)
    python3 "$BENCH_DIR/gen_synth.py" synth --out "$WORK/synth" --files "${SYNTH_FILES:-100000}" --seed "${SYNTH_SEED:-1}"
    finish synth "$t0"
}

corpus_commit10k() {
    begin commit10k || return 0
    local t0; t0=$(date +%s)
    python3 "$BENCH_DIR/gen_synth.py" commit10k --out "$WORK/commit10k" --files 10000 --seed "${SYNTH_SEED:-1}"
    finish commit10k "$t0"
}

# ---------------------------------------------------------------- main
# (a function called on the last line, so editing this file during a run cannot derail it)
main() {
ALL=(wheels rootfs synth commit10k)
[[ $# -gt 0 ]] && TODO=("$@") || TODO=("${ALL[@]}")
[[ $EUID -eq 0 ]] || log "warning: not root; rootfs (debootstrap/chroot) will fail"
rc=0
for c in "${TODO[@]}"; do
    case "$c" in
        wheels|rootfs|synth|commit10k) ;;
        *) die "unknown corpus '$c' (known: ${ALL[*]})" ;;
    esac
    # each corpus in a subshell with errexit: one failing does not stop the others
    # (not under `if`, which would switch errexit off inside)
    set +e
    ( set -e; "corpus_$c" )
    local st=$?
    set -e
    if [[ $st -ne 0 ]]; then
        log "$c: FAILED (exit $st)"
        rc=1
    fi
done
return $rc
}

{ main "$@"; exit $?; }
