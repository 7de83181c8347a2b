#!/usr/bin/env bash
# How many bytes one `ferry-apply update` step reads from the downloaded bundle file (issue 15:
# "read a downloaded bundle fewer times").
#
#   bash bench/update_reads.sh [BIN_DIR...]
#
# Publishes two versions of a small tree (v1: a 4 MB file that never changes and eight 512 KB
# files, v2: two of them replaced) into a channel repository, serves it with a private nginx on
# 127.0.0.1, puts a target at v1 and runs `ferry-apply update` to v2 under strace, once per
# BIN_DIR (default: target/debug), twice: `download` (the bundle is fetched) and `cached` (it is
# already complete in the cache, as after a run stopped between download and apply). Reported per
# binary and case: the bundle (its size), and the bytes read(2)/pread64(2)/readv(2) returned from
# descriptors of the bundle file in the cache (`NAME.part`, `NAME`), split into the download
# phase (until `NAME.part` is renamed into place) and the rest (the cache check, the index
# check, apply). Needs nginx (/usr/sbin/nginx), strace and python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/debug")
WORK="$(mktemp -d /tmp/ferry-update-reads.XXXXXX)"
NGINX_PID=
cleanup() {
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
B="${BINS[0]}"
mk_tree() { # DIR EPOCH
  mkdir -p "$1/m"
  head -c 4000000 </dev/urandom >"$1/stable.bin"
  for i in 0 1 2 3 4 5 6 7; do head -c 524288 </dev/urandom >"$1/m/f$i.bin"; done
}
mk_tree "$WORK/v1"
cp -a "$WORK/v1" "$WORK/v2"
for i in 0 1; do head -c 524288 </dev/urandom >"$WORK/v2/m/f$i.bin"; done
"$B/ferry-build" -q keygen --unencrypted --out "$WORK/k"
for v in 1 2; do
  "$B/ferry-build" -q publish --repo "$WORK/repo" --channel c --new "$WORK/v$v" --version "$v" \
    --key "$WORK/k.secret" --deltas-from 1 --store "$WORK/store" --level fast
done
chmod -R a+rX "$WORK"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/ng"
cat >"$WORK/ng/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $WORK/ng/nginx.pid;
error_log $WORK/ng/error.log;
events { worker_connections 16; }
http { access_log off; client_body_temp_path $WORK/ng/b; proxy_temp_path $WORK/ng/p;
  server { listen 127.0.0.1:$port; root $WORK/repo; } }
EOF
/usr/sbin/nginx -p "$WORK/ng" -c "$WORK/ng/nginx.conf" -e "$WORK/ng/error.log" &
NGINX_PID=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
printf 'binary\tcase\tbundle\tsize\tread_download\tread_after\tread_total\n'
for b in "${BINS[@]}"; do
  for case in download cached; do
    t="$WORK/t-$case-$RANDOM"
    mkdir -p "$t"
    "$b/ferry-apply" -q update "$WORK/repo" --target "$t" --trust "$WORK/k.pub" --channel c --to 1 >/dev/null
    if [ "$case" = cached ]; then # complete in the cache (downloaded by a run that stopped there)
      mkdir -p "$t/.ferry/updates"
      cp "$WORK"/repo/c/bundles/v1-v2.*.ferry "$t/.ferry/updates/"
    fi
    log="$WORK/strace-$RANDOM"
    env -u http_proxy -u https_proxy -u all_proxy -u ALL_PROXY strace -f -qq -y -o "$log" \
      -e trace=read,pread64,readv,preadv,preadv2,rename,renameat,renameat2 \
      "$b/ferry-apply" -q update "http://127.0.0.1:$port" --target "$t" --trust "$WORK/k.pub" --channel c >/dev/null
    python3 - "$log" "$WORK/repo/c/bundles" "$b" "$case" <<'PY'
import os, re, sys
log, bundles, b, case = sys.argv[1:]
sizes = {n: os.path.getsize(os.path.join(bundles, n)) for n in os.listdir(bundles)}
dl, after, renamed, got = 0, 0, case == "cached", None
for l in open(log).read().splitlines():
    m = re.search(r'\b(?:read|pread64|readv|preadv2?)\(\d+<([^>]*)>.*=\s+(\d+)$', l)
    if m:
        base = os.path.basename(m.group(1))
        name = base[:-5] if base.endswith('.part') else base
        if '/updates/' in m.group(1) and name in sizes:
            got = name
            if renamed: after += int(m.group(2))
            else: dl += int(m.group(2))
        continue
    if re.search(r'rename(at2?)?\(.*\.part', l):
        renamed = True
bin_ = os.path.basename(os.path.dirname(b)) + '/' + os.path.basename(b)
print(f"{bin_}\t{case}\t{got}\t{sizes.get(got)}\t{dl}\t{after}\t{dl + after}")
PY
  done
done
