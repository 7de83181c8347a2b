#!/usr/bin/env bash
# Create the benchmark corpora under bench/work/ (gitignored).
#
#   bash bench/corpora.sh                 # the original four corpora
#   bash bench/corpora.sh all             # all eight
#   bash bench/corpora.sh synth commit10k # only some
#
# Corpora: wheels rootfs synth commit10k pyext rootfs-up npm pyext-arm64 rootfs-up-arm64 (`all` = all of them; the default
# without arguments is the first four, the original set). Each corpus lives in
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
                --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" \
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
# debootstrap_minbase NAME DIR MIRROR: debootstrap --variant=minbase bookworm into DIR/old, then the
# clean-up both rootfs corpora apply to both sides: no downloaded .debs, no apt index files (they
# are not part of an OS image update), no debootstrap leftovers.
debootstrap_minbase() {
    local name=$1 d=$2 mirror=$3
    log "$name: debootstrap --variant=minbase bookworm old (log: $d/debootstrap.log)"
    if ! debootstrap --variant=minbase bookworm "$d/old" "$mirror" > "$d/debootstrap.log" 2>&1; then
        tail -n 30 "$d/debootstrap.log" >&2
        [[ -f "$d/old/debootstrap/debootstrap.log" ]] && tail -n 30 "$d/old/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (see $d/debootstrap.log)"
    fi
    rm -rf "$d/old/var/cache/apt/archives/"*.deb "$d/old/var/lib/apt/lists/"* "$d/old/debootstrap"
    mkdir -p "$d/old/var/lib/apt/lists/partial"
}

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

    debootstrap_minbase rootfs "$d" "$mirror"

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

# ---------------------------------------------------------------- (e) pyext
# A Python application's scientific stack at consecutive patch releases (issue 18): the cp312
# manylinux x86_64 wheels of numpy 2.2.5→2.2.6, scipy 1.16.1→1.16.2 and pandas 2.3.1→2.3.2,
# unzipped into one site-packages-like tree per side. Both numpy and scipy ship a new OpenBLAS
# build in these releases (numpy.libs/libscipy_openblas64_-*.so 22.5→25.0 MB, scipy.libs/
# libscipy_openblas-*.so 22.2→24.8 MB); auditwheel names a vendored library after a hash of its
# content, so a changed BLAS is a file under a new name (a rename + change), as in real updates.
# The wheels are pinned by sha256 (a PyPI file never changes; the check catches pip picking
# another wheel of the same version).
PYEXT_OLD=(numpy==2.2.5 scipy==1.16.1 pandas==2.3.1)
PYEXT_NEW=(numpy==2.2.6 scipy==1.16.2 pandas==2.3.2)
PYEXT_SHA256="\
3a801fef99668f309b88640e28d261991bfad9617c27beda4a3aec4f217ea073  numpy-2.2.5-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
f965bbf3235b01c776115ab18f092a95aa74c271a52577bcb0563e85738fd618  scipy-1.16.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
7dcb79bf373a47d2a40cf7232928eb7540155abbc460925c2c96d2d30b006eb4  pandas-2.3.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
fd83c01228a688733f1ded5201c678f0c53ecc1006ffbc404db9f7a899ac6249  numpy-2.2.6-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
f66bd07ba6f84cd4a380b41d1bf3c59ea488b590a2ff96744845163309ee8e2f  scipy-1.16.2-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
96d31a6b4354e3b9b8a2c848af75d31da390657e3ac6f30c05c82068b9ed79b9  pandas-2.3.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
"

# (e2) pyext-arm64: the same releases as aarch64 wheels (issue 18: executable-aware methods on
# ARM64 ELF; the OpenBLAS libraries are renamed and rebuilt the same way).
PYEXT_ARM64_SHA256="\
9d75f338f5f79ee23548b03d801d28a505198297534f62416391857ea0479571  numpy-2.2.5-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
6c62eea7f607f122069b9bad3f99489ddca1a5173bef8a0c75555d7488b6f725  scipy-1.16.1-cp312-cp312-manylinux2014_aarch64.manylinux_2_17_aarch64.whl
9b7ff55f31c4fcb3e316e8f7fa194566b286d6ac430afec0d461163312c5841e  pandas-2.3.1-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
f2618db89be1b4e05f7a1a847a9c1c0abd63e63a1607d892dd54668dd92faf87  numpy-2.2.6-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
ea3421209bf00c8a5ef2227de496601087d8f638a2363ee09af059bd70976dc1  scipy-1.16.2-cp312-cp312-manylinux2014_aarch64.manylinux_2_17_aarch64.whl
0bd281310d4f412733f319a5bc552f86d62cddc5f51d2e392c8787335c994175  pandas-2.3.2-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
"

corpus_pyext() { pyext_corpus pyext x86_64 "$PYEXT_SHA256"; }
corpus_pyext-arm64() { pyext_corpus pyext-arm64 aarch64 "$PYEXT_ARM64_SHA256"; }

pyext_corpus() { # pyext_corpus NAME ARCH SHA256SUMS
    local name=$1 arch=$2 sums=$3
    begin "$name" || return 0
    local t0; t0=$(date +%s)
    local d="$WORK/$name"
    need_apt unzip unzip
    local PIP=(python3 -m pip)
    "${PIP[@]}" --version >/dev/null 2>&1 || die "python3 -m pip not available"
    mkdir -p "$d/wheels"
    printf '%s' "$sums" > "$d/wheels/SHA256SUMS"
    for side in old new; do
        local -n specs="PYEXT_${side^^}"
        mkdir -p "$d/dl-$side" "$d/$side"
        for spec in "${specs[@]}"; do
            log "$name/$side: pip download $spec"
            # PIP_FIND_LINKS may point at a local wheel cache; ignore it (the sha256 check below
            # would refuse a locally built wheel anyway)
            PIP_FIND_LINKS= "${PIP[@]}" download --quiet --no-deps --only-binary=:all: \
                --python-version 3.12 --implementation cp --abi cp312 \
                --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" \
                -d "$d/dl-$side" "$spec" || die "pip download $spec failed"
        done
        mv "$d/dl-$side"/*.whl "$d/wheels/" && rmdir "$d/dl-$side"
    done
    (cd "$d/wheels" && sha256sum --quiet -c SHA256SUMS) \
        || die "$name: the downloaded wheels are not the pinned ones (bench/corpora.sh PYEXT_SHA256, PYEXT_ARM64_SHA256)"
    for side in old new; do
        local -n specs="PYEXT_${side^^}"
        for spec in "${specs[@]}"; do
            local whl; whl=$(ls "$d/wheels/${spec%%==*}-${spec#*==}-"*.whl)
            log "$name/$side: unzip $(basename "$whl")"
            unzip -q -o "$whl" -d "$d/$side"
        done
    done
    tree_stats "$name"
    finish "$name" "$t0"
}

# ---------------------------------------------------------------- (f) rootfs-up
# A Debian root filesystem update that installs packages (issue 18): old = debootstrap
# --variant=minbase bookworm (as rootfs), new = a copy of old + `apt-get install
# --no-install-recommends openssh-server curl python3 ca-certificates less git` in a chroot, from
# the bookworm suite only (no -updates/-security: nothing in old is upgraded). Pinned: old's
# package set must equal bench/pins/rootfs-up/old.dpkg, and every package installed into new
# is given with its exact version from bench/pins/rootfs-up/install.txt (57 packages: the six and
# their dependencies); afterwards new's package set must be old.dpkg + install.txt. A mirror
# that has moved past bookworm 12.15 (the point release the pins were taken from) fails the
# check; ROOTFS_UP_UNPINNED=1 builds anyway with whatever the mirror has (and says so in .done).
# The SSH host keys that openssh-server's postinst generates are removed from new (random on
# every build; image builders remove them too, the first boot makes new ones).
ROOTFS_UP_PKGS=(openssh-server curl python3 ca-certificates less git)

dpkg_list() { # dpkg_list ROOT: installed package=version, sorted
    chroot "$1" dpkg-query -W -f '${db:Status-Abbrev} ${Package}=${Version}\n' | awk '$1 == "ii" {print $2}' | sort
}

corpus_rootfs-up() {
    begin rootfs-up || return 0
    local t0; t0=$(date +%s)
    local d="$WORK/rootfs-up" pins="$BENCH_DIR/pins/rootfs-up" unpinned=""
    need_apt debootstrap debootstrap
    local mirror; mirror=$(detect_mirror)
    log "rootfs-up: mirror $mirror"
    pin_check() { # pin_check WHAT EXPECTED ACTUAL
        if ! diff -u "$2" "$3" > "$d/pin-diff-$1.txt"; then
            if [[ -n "${ROOTFS_UP_UNPINNED:-}" ]]; then
                log "rootfs-up: WARNING: $1 differs from the pins ($d/pin-diff-$1.txt); ROOTFS_UP_UNPINNED set, going on"
                unpinned=" UNPINNED ($1 differs from bench/pins/rootfs-up)"
            else
                head -n 20 "$d/pin-diff-$1.txt" >&2
                die "$1 differs from the pinned package set (diff in $d/pin-diff-$1.txt; the mirror moved past bookworm 12.15?); ROOTFS_UP_UNPINNED=1 to build anyway"
            fi
        else
            rm -f "$d/pin-diff-$1.txt"
        fi
    }
    # old: the rootfs corpus's old when it exists and has the pinned package set (same debootstrap
    # and clean-up), else a debootstrap of our own
    if [[ -f "$WORK/rootfs/.done" ]] && dpkg_list "$WORK/rootfs/old" 2>/dev/null | cmp -s - "$pins/old.dpkg"; then
        log "rootfs-up: old = cp -a of rootfs/old (same pinned package set)"
        cp -a "$WORK/rootfs/old" "$d/old"
    else
        debootstrap_minbase rootfs-up "$d" "$mirror"
    fi
    dpkg_list "$d/old" > "$d/old.dpkg"
    pin_check old "$pins/old.dpkg" "$d/old.dpkg"

    log "rootfs-up: cp -a old new"
    cp -a "$d/old" "$d/new"
    local n="$d/new"
    printf 'deb %s bookworm main\n' "$mirror" > "$n/etc/apt/sources.list"
    cp -L /etc/resolv.conf "$n/etc/resolv.conf" 2>/dev/null || true
    # no daemons started inside the chroot (sshd's postinst would start it otherwise)
    printf '#!/bin/sh\nexit 101\n' > "$n/usr/sbin/policy-rc.d"; chmod 755 "$n/usr/sbin/policy-rc.d"
    local want=()
    if [[ -n "${ROOTFS_UP_UNPINNED:-}" ]]; then want=("${ROOTFS_UP_PKGS[@]}"); else mapfile -t want < "$pins/install.txt"; fi

    # Only /proc is mounted: debootstrap's /dev already has the nodes apt and the maintainer
    # scripts use (null, zero, random, urandom, tty), and with nothing bind-mounted from the host
    # a failed unmount cannot make the later rm -rf reach host files.
    trap 'rootfs_umount_all "'"$n"'"' EXIT
    mount -t proc proc "$n/proc"
    log "rootfs-up: chroot new: apt-get install --no-install-recommends ${ROOTFS_UP_PKGS[*]} (${#want[@]} packages pinned; log: $d/chroot.log)"
    local rc=0
    chroot "$n" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C \
        /bin/sh -ec 'apt-get update
                     apt-get -y -o Dpkg::Options::=--force-confold install --no-install-recommends "$@"
                     apt-get clean' sh "${want[@]}" > "$d/chroot.log" 2>&1 || rc=$?
    if [[ $rc -eq 0 && -z "${ROOTFS_UP_UNPINNED:-}" ]]; then
        # naming every package (to pin its version) made apt mark the dependencies as manually
        # installed; mark them automatic, as a plain `apt-get install` of the six would have
        local auto=() p top=" ${ROOTFS_UP_PKGS[*]} "
        for p in "${want[@]}"; do [[ "$top" == *" ${p%%=*} "* ]] || auto+=("${p%%=*}"); done
        chroot "$n" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C apt-mark auto "${auto[@]}" >> "$d/chroot.log" 2>&1 || rc=$?
    fi
    umount "$n/proc" 2>/dev/null || rootfs_umount_all "$n"
    trap - EXIT
    if awk -v b="$(realpath "$n")/" 'index($2, b) == 1 {found = 1} END {exit !found}' /proc/mounts; then
        die "rootfs-up: something is still mounted below $n"
    fi
    if [[ $rc -ne 0 ]]; then
        tail -n 30 "$d/chroot.log" >&2
        die "apt-get in chroot failed (see $d/chroot.log)"
    fi
    rm -f "$n/usr/sbin/policy-rc.d" "$n/etc/ssh/ssh_host_"*
    # resolv.conf back to what old has; same apt clean-up as old; old's sources.list
    if [[ -e "$d/old/etc/resolv.conf" ]]; then cp -a "$d/old/etc/resolv.conf" "$n/etc/resolv.conf"; else rm -f "$n/etc/resolv.conf"; fi
    cp -a "$d/old/etc/apt/sources.list" "$n/etc/apt/sources.list"
    rm -rf "$n/var/cache/apt/archives/"*.deb "$n/var/lib/apt/lists/"* "$n/var/cache/apt/"*.bin
    mkdir -p "$n/var/lib/apt/lists/partial"
    dpkg_list "$n" > "$d/new.dpkg"
    sort -u "$pins/old.dpkg" "$pins/install.txt" > "$d/expected-new.dpkg"
    pin_check new "$d/expected-new.dpkg" "$d/new.dpkg"
    grep -E '^(Inst|Setting up|Unpacking) ' "$d/chroot.log" > "$d/changes.txt" || true
    log "rootfs-up: $(grep -c '^Unpacking ' "$d/chroot.log" || true) packages unpacked in new"
    [[ -z "$unpinned" ]] || echo "$unpinned" > "$d/UNPINNED"
    tree_stats rootfs-up
    finish rootfs-up "$t0"
}

# ---------------------------------------------------------------- (f2) rootfs-up-arm64
# rootfs-up for AArch64 (issue 18: executable-aware methods on an arm64 root filesystem), built
# without running arm64 code (no emulator needed): old = the first stage of `debootstrap --foreign
# --arch=arm64 --variant=minbase bookworm` (every base package unpacked, maintainer scripts not
# run); new = a copy of old with the 57 packages of bench/pins/rootfs-up/install.txt (the same
# versions as rootfs-up) downloaded for arm64 from the mirror, checked against the SHA256 of the
# mirror's Packages index, and unpacked with dpkg-deb | tar --keep-directory-symlink (merged /usr
# kept). What differs from rootfs-up: no maintainer scripts ran on either side, so new has no
# byte-compiled Python (`__pycache__`), no generated host keys or alternatives links, and dpkg's
# status database does not list the added packages.
corpus_rootfs-up-arm64() {
    begin rootfs-up-arm64 || return 0
    local t0; t0=$(date +%s)
    local d="$WORK/rootfs-up-arm64" pins="$BENCH_DIR/pins/rootfs-up"
    need_apt debootstrap debootstrap
    local mirror; mirror=$(detect_mirror)
    log "rootfs-up-arm64: debootstrap --foreign --arch=arm64 --variant=minbase bookworm old (log: $d/debootstrap.log)"
    if ! debootstrap --foreign --arch=arm64 --variant=minbase bookworm "$d/old" "$mirror" > "$d/debootstrap.log" 2>&1; then
        tail -n 30 "$d/debootstrap.log" >&2
        die "debootstrap --foreign failed (see $d/debootstrap.log)"
    fi
    rm -rf "$d/old/var/cache/apt/archives/"*.deb "$d/old/var/lib/apt/lists/"* "$d/old/debootstrap"
    mkdir -p "$d/old/var/lib/apt/lists/partial"
    log "rootfs-up-arm64: cp -a old new"
    cp -a "$d/old" "$d/new"
    mkdir -p "$d/debs"
    log "rootfs-up-arm64: downloading the $(wc -l < "$pins/install.txt") pinned packages for arm64"
    python3 - "$mirror" "$pins/install.txt" "$d/debs" <<'PY' || die "rootfs-up-arm64: package download failed"
import hashlib, lzma, sys, urllib.request
mirror, pins, out = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
want = dict(l.strip().split("=", 1) for l in open(pins) if l.strip())
idx = lzma.decompress(urllib.request.urlopen(f"{mirror}/dists/bookworm/main/binary-arm64/Packages.xz").read()).decode()
found = {}
for para in idx.split("\n\n"):
    f = dict(l.split(": ", 1) for l in para.splitlines() if ": " in l and not l.startswith(" "))
    if f.get("Package") in want and want[f["Package"]] == f.get("Version"):
        found[f["Package"]] = (f["Filename"], f["SHA256"])
missing = sorted(set(want) - set(found))
if missing:
    sys.exit(f"not in the arm64 index at the pinned version: {missing}")
for name, (fn, sha) in sorted(found.items()):
    data = urllib.request.urlopen(f"{mirror}/{fn}").read()
    if hashlib.sha256(data).hexdigest() != sha:
        sys.exit(f"{fn}: SHA256 differs from the index")
    open(f"{out}/{name}.deb", "wb").write(data)
PY
    local deb
    for deb in "$d/debs/"*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$d/new" \
            || die "rootfs-up-arm64: unpacking $deb failed"
    done
    rm -rf "$d/debs"
    tree_stats rootfs-up-arm64
    finish rootfs-up-arm64 "$t0"
}

# ---------------------------------------------------------------- (g) npm
# An npm dependency update (issue 18): a package.json with 36 real dependencies (express, react,
# webpack, typescript, jest, eslint, esbuild, mongoose, ...) at pinned versions; old = `npm ci
# --ignore-scripts` of bench/pins/npm/old/{package.json,package-lock.json}; new = a copy of old
# with bench/pins/npm/new/{package.json,package-lock.json} (30 of the 36 bumped to releases of
# about nine months later) and `npm install --ignore-scripts`, as a developer or a deploy step
# updates a checkout. The lock files pin every transitive package (version and integrity hash);
# afterwards every package npm installed is checked against them. npm extracts files with the
# time of extraction as mtime, and it replaces a package's whole directory when the package
# changes, so every unchanged file of an updated package is a file whose only change is the mtime
# (about 3,000 here; tree-stats.tsv, mtime_only_files).
corpus_npm() {
    begin npm || return 0
    local t0; t0=$(date +%s)
    local d="$WORK/npm" pins="$BENCH_DIR/pins/npm"
    need_apt npm npm
    # a cache of our own (not the user's), removed at the end; no audit/fund requests; the lock
    # file written without registry URLs whatever the user's .npmrc says
    local NPM=(npm --cache "$d/npm-cache" --no-audit --no-fund --no-update-notifier --ignore-scripts
               --omit-lockfile-registry-resolved)
    mkdir -p "$d/old"
    cp "$pins/old/package.json" "$pins/old/package-lock.json" "$d/old/"
    log "npm/old: npm ci (log: $d/npm-old.log)"
    (cd "$d/old" && "${NPM[@]}" ci) > "$d/npm-old.log" 2>&1 || { tail -n 20 "$d/npm-old.log" >&2; die "npm ci failed"; }
    npm_check "$d/old" "$pins/old/package-lock.json"
    log "npm: cp -a old new"
    cp -a "$d/old" "$d/new"
    cp "$pins/new/package.json" "$pins/new/package-lock.json" "$d/new/"
    log "npm/new: npm install (log: $d/npm-new.log)"
    (cd "$d/new" && "${NPM[@]}" install) > "$d/npm-new.log" 2>&1 || { tail -n 20 "$d/npm-new.log" >&2; die "npm install failed"; }
    npm_check "$d/new" "$pins/new/package-lock.json"
    cmp -s "$d/new/package-lock.json" "$pins/new/package-lock.json" \
        || die "npm install rewrote new/package-lock.json (diff it against $pins/new/package-lock.json)"
    rm -rf "$d/npm-cache"
    tree_stats npm
    finish npm "$t0"
}

# npm_check DIR LOCK: every package installed under DIR/node_modules (npm's hidden lock file
# node_modules/.package-lock.json) has the version the pinned LOCK gives it; packages of LOCK that
# were not installed must be optional ones (other platforms' binaries)
npm_check() {
    python3 - "$1/node_modules/.package-lock.json" "$2" <<'PY' || die "npm: $1 does not match $2"
import json, sys
got = json.load(open(sys.argv[1]))["packages"]
want = {k: v for k, v in json.load(open(sys.argv[2]))["packages"].items() if k}
bad = [f"{k}: {v.get('version')} installed, {want.get(k, {}).get('version')} pinned" for k, v in got.items()
       if k and v.get("version") != want.get(k, {}).get("version")]
bad += [f"{k}: pinned {v.get('version')}, not installed" for k, v in want.items() if k not in got and not v.get("optional")]
for b in bad[:20]:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# tree_stats NAME: what differs between old and new (perfile.py classify: changed/added/deleted
# files, and how many unchanged files differ in mtime only) -> WORK/NAME/tree-stats.tsv
tree_stats() {
    local d="$WORK/$1"
    python3 "$BENCH_DIR/perfile.py" classify "$d/old" "$d/new" "$d/.classify" 2>/dev/null
    mv "$d/.classify/stats.tsv" "$d/tree-stats.tsv"
    rm -rf "$d/.classify"
    log "$1: $(awk -F'\t' '{printf "%s%s=%s", (NR > 1 ? ", " : ""), $1, $2}' "$d/tree-stats.tsv")"
}

# ---------------------------------------------------------------- main
# (a function called on the last line, so editing this file during a run cannot derail it)
main() {
ALL=(wheels rootfs synth commit10k)
MORE=(pyext rootfs-up npm pyext-arm64 rootfs-up-arm64)   # issue 18's shapes; not in the default set (they need npm and network)
[[ $# -gt 0 ]] && TODO=("$@") || TODO=("${ALL[@]}")
[[ "${TODO[*]}" == all ]] && TODO=("${ALL[@]}" "${MORE[@]}")
[[ $EUID -eq 0 ]] || log "warning: not root; rootfs (debootstrap/chroot) will fail"
rc=0
for c in "${TODO[@]}"; do
    case "$c" in
        wheels|rootfs|synth|commit10k|pyext|rootfs-up|npm|pyext-arm64|rootfs-up-arm64) ;;
        *) die "unknown corpus '$c' (known: ${ALL[*]} ${MORE[*]}, or all)" ;;
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
