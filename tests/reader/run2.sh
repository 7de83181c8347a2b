#!/bin/bash
# End-to-end checks of reader2.py (written from bundle-format.md alone) against ferry-build /
# ferry-apply as black boxes: encrypted bundles, split bundles, multi-signature and trust policy,
# offline signing, channel repositories and path choice, key rotation.
#   bash run2.sh [BIN_DIR] [TREES_DIR]    (trees: OLD in TREES/old, NEW in TREES/new)
set -u
here=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-$here/../../target/release}; TREES=${2:?usage: run2.sh BIN_DIR TREES_DIR}
B=$BIN/ferry-build; A=$BIN/ferry-apply; PY=${PY:-python3}
R2="$PY $here/reader2.py"
W=${W:-$(mktemp -d /var/tmp/ferry-reader2.XXXXXX)}
export W BIN PY
rm -rf "$W"; mkdir -p "$W"; cd "$W"
T=$TREES; fail=0
ok()  { echo "OK   $*"; }
bad() { echo "FAIL $*"; fail=1; }
expect() { # expected-rc description command...
  local want=$1 d=$2; shift 2; out=$("$@" 2>&1); rc=$?
  if [ "$rc" = "$want" ]; then ok "$d"; else bad "$d (rc $rc, want $want): $(echo "$out" | tail -2)"; fi
}
identical() { echo "$out" | grep -q "RESULT: identical"; }

for k in A B C D; do $B -q keygen --unencrypted --out $k; done
for r in r1 r2 r3; do $B -q recipient-gen --out $r; done
idA=$(awk '{print $2}' A.pub)

echo "== 1. encrypted bundles (§4.10)"
$B -q build --old $T/old --new $T/new --key A.secret --version 2 --base-version 1 --encrypt-to r1.recipient --encrypt-to r2.recipient --out enc.ferry
$B -q build --new $T/new --key A.secret --version 3 --encrypt-to r3.recipient --out encfull.ferry
expect 0 "encrypted delta: public part (no identity)" $R2 bundle enc.ferry --trust A.pub
expect 0 "encrypted delta: open with r2, apply, compare with NEW" $R2 bundle enc.ferry --trust A.pub --identity r2.identity --old $T/old --out out-enc --expect $T/new
identical || bad "encrypted delta result"
expect 0 "encrypted full: open with r3 (r1 tried first), apply" $R2 bundle encfull.ferry --trust A.pub --identity r1.identity --identity r3.identity --out out-encfull --expect $T/new
identical || bad "encrypted full result"
expect 16 "wrong identity refused (reader2)" $R2 bundle enc.ferry --trust A.pub --identity r3.identity
expect 16 "wrong identity refused (ferry-apply verify)" $A -q verify --trust A.pub --identity r3.identity enc.ferry
( cd "$W" && $PY $here/craft_sealed.py enc.ferry r1.identity >/dev/null )
for c in same:0 commit:3 disagree:3 aead:3 wrapped:16 nested:3 outerhook:3; do
  n=${c%%:*}; want=${c##*:}
  expect $want "tampered sealed bundle '$n' (reader2)" $R2 bundle cr-$n.ferry --trust A.pub --identity r1.identity
  expect $want "tampered sealed bundle '$n' (ferry-apply)" $A -q verify --trust A.pub --identity r1.identity cr-$n.ferry
done

echo "== 2. split bundles (§2.3)"
$B -q build --old $T/old --new $T/new --key A.secret --version 2 --base-version 1 --split-size 8K --out sp.ferry
[ ! -e sp.ferry ] && [ -e sp.ferry.002 ] && ok "build --split-size wrote parts, no whole file" || bad "split parts"
expect 0 "split (build --split-size) read as NAME, applied" $R2 bundle sp.ferry --trust A.pub --old $T/old --out out-sp --expect $T/new
identical || bad "split result"
$B -q build --old $T/old --new $T/new --key A.secret --version 2 --base-version 1 --out whole.ferry
cp whole.ferry sp2.ferry; $B -q split --size 6000 sp2.ferry
cat sp2.ferry.0* | cmp -s - whole.ferry && ok "cat NAME.0* gives the bundle back" || bad "cat parts"
expect 0 "split (ferry-build split) read from NAME.000" $R2 bundle sp2.ferry.000 --trust A.pub
mkdir gap; cp sp2.ferry.0* gap/; rm gap/sp2.ferry.002
expect 3 "gap in parts refused" $R2 bundle gap/sp2.ferry --trust A.pub
echo "$out" | grep -q "sp2.ferry.002 is missing (gap/sp2.ferry.003 exists)" && ok "gap message" || bad "gap message: $out"
rm gap/sp2.ferry.003 gap/sp2.ferry.004
expect 3 "truncated split bundle refused" $R2 bundle gap/sp2.ferry --trust A.pub

echo "== 3. several signatures, thresholds, trust policy (§3.2-3.4, §9)"
export SOURCE_DATE_EPOCH=1700000000
$B -q build --old $T/old --new $T/new --key A.secret --key B.secret --version 2 --out ab.ferry
$B -q build --old $T/old --new $T/new --key B.secret --key A.secret --version 2 --out ba.ferry
$B -q build --old $T/old --new $T/new --unsigned --version 2 --out u.ferry
cp u.ferry u1.ferry; $B -q sign u1.ferry --key B.secret; $B -q sign u1.ferry --key A.secret
cp ab.ferry abc.ferry; $B -q sign abc.ferry --key C.secret
unset SOURCE_DATE_EPOCH
cmp -s ab.ferry ba.ferry && cmp -s ab.ferry u1.ferry && ok "A,B = B,A = unsigned+sign B+sign A, byte for byte" || bad "signature order"
n=$(bash $here/policy_tests.sh | tee policy.log | grep -c '^DIFF')
echo "     policy directories: $(grep -c '^SAME' policy.log) same, $(grep -c BOTH-REFUSE policy.log) both refuse, $n differ (expected 15: findings F1-F3)"
[ "$n" = 15 ] && ok "policy comparison as documented" || bad "policy comparison changed: see $W/policy.log"

echo "== 4. offline signing (§3.5)"
cp u.ferry off.ferry; $B -q sign off.ferry --export-request off.req
$B -q sign-request off.req --key C.secret --out off.C.sig
expect 0 "signing request parsed, checked; signature file verified" $R2 request off.req --sig off.C.sig --key C.pub
expect 0 "signature file against the bundle" $R2 sigfile off.C.sig --bundle off.ferry
$B -q sign off.ferry --import off.C.sig
expect 0 "imported signature counts (reader2 policy)" $R2 bundle off.ferry --trust C.pub
expect 3 "signature file refused for another bundle" $R2 sigfile off.C.sig --bundle whole.ferry

echo "== 5. channel repository (§18)"
mkdir vt; cp -a $T/old vt/1; cp -a $T/new vt/2
cp -a vt/2 vt/3; echo "v3 change" >> vt/3/etc/conf1; head -c 300000 /dev/urandom > vt/3/data/rand3.bin
cp -a vt/3 vt/4; echo "v4 change" >> vt/4/etc/conf2; rm vt/4/data/rand3.bin
cp -a vt/4 vt/5; echo "v5 change" >> vt/5/etc/conf3; head -c 50000 /dev/urandom > vt/5/data/rand5.bin
cp -a vt/5 vt/6; echo "v6" >> vt/6/etc/conf4
for v in 1 2 3 4 5 6; do $B -q publish --repo repo --channel stable --new vt/$v --version $v --key A.secret --key B.secret --deltas-from 2 --level fast; done
mkdir -p pol/AB; cp A.pub B.pub pol/AB/; echo "threshold 2" > pol/AB/policy
expect 0 "index verified (2-of-2), every bundle checked against its entry" $R2 index repo stable --trust pol/AB --installed 1 --verify-bundles
mkdir -p tg/empty tg/v0
$A -q update repo --target tg/v0 --trust pol/AB --channel stable --to 1 >/dev/null; mv tg/v0 tg/v1
for v in 2 3 4 5; do cp -a tg/v$((v-1)) tg/v$v; $A -q update repo --target tg/v$v --trust pol/AB --to $v >/dev/null; done
bash $here/path_tests.sh repo pol/AB > path.log
echo "     path choice: $(grep -c '^SAME' path.log) same, $(grep -c '^DIFF' path.log) differ"
grep -q '^DIFF' path.log && bad "path choice: see $W/path.log" || ok "path choice = ferry-apply update --dry-run for every (installed, goal)"
cp -a repo repo-miss; rm repo-miss/stable/bundles/v2-v4.* repo-miss/stable/bundles/v4-v6.* repo-miss/stable/bundles/v4-v5.*
cp -a tg/v2 tg/x2
ref=$($A update repo-miss --target tg/x2 --trust pol/AB --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['exit_code'])")
st=$($A status --target tg/x2 | head -1 | awk '{print $3}')
mine=$($R2 index repo-miss stable --trust pol/AB --installed 2 --simulate | python3 -c "import json,sys; s=json.load(sys.stdin)['simulated']; print(s['exit'], s['reached'])")
[ "$mine" = "$ref $st" ] && ok "missing bundles: simulated update (exit, version reached) = ferry-apply ($ref $st)" || bad "missing: ref $ref $st, mine $mine"
cp -a tg/x2 tg/x3
$A -q update repo-miss --target tg/x3 --trust pol/AB --replace >/dev/null 2>&1
mine=$($R2 index repo-miss stable --trust pol/AB --installed $st --replace --simulate | python3 -c "import json,sys; s=json.load(sys.stdin)['simulated']; print(s['exit'], s['reached'])")
st3=$($A status --target tg/x3 | head -1 | awk '{print $3}')
[ "$mine" = "0 $st3" ] && ok "--replace: simulated = ferry-apply (reached $st3)" || bad "replace: mine $mine ref $st3"
# crafted indexes (signed with the test keys): freshness/timestamp rules, ties
for v in 1 2; do $B -q publish --repo repots --channel beta --new vt/$v --version $v --key A.secret --timestamp-key D.secret --timestamp-pub C.pub --release-expires 30d --expires 1h --level fast --deltas-from 1; done
$B -q publish --repo repots --channel beta --refresh --timestamp-key D.secret
cp repots/beta/index.ferry-index idx-ts-2r.bin
$PY - <<'EOF'
EOF
HERE=$here $PY - <<'EOF'
import sys, os, shutil, time; sys.path.insert(0, os.environ["HERE"])
from forge_index import *
ix = load('idx-ts-2r.bin'); rel, fr = ix['rel'], ix['fresh']
A, B, C, D = (seckey(k + '.secret') for k in 'ABCD'); now = int(time.time())
cases = {
 'same': (rel, fr, [A], [D]), 'mixmatch': (rel, dict(fr, release=bytes(32)), [A], [D]),
 'seqmismatch': (rel, dict(fr, release_seq=1, release=None), [A], [D]),
 'expired': (rel, dict(fr, seq=10, expires=now - 7300, release=None), [A], [D]),
 'inallow': (rel, dict(fr, seq=11, expires=now - 1800, release=None), [A], [D]),
 'relexpired': (dict(rel, expires=now - 7300), dict(fr, seq=12, release=None), [A], [D]),
 'fresh_by_B': (rel, dict(fr, seq=13, release=None), [A], [B]), 'fresh_by_A': (rel, dict(fr, seq=14, release=None), [A], [A]),
 'fresh_by_C': (rel, dict(fr, seq=15, release=None), [A], [C]), 'rel_by_D': (rel, dict(fr, seq=16, release=None), [D], [D]),
 'rel_by_AB': (rel, dict(fr, seq=17, release=None), [A, B], [D]), 'fresh_none': (rel, dict(fr, seq=18, release=None), [A], []),
 'samerelseq': (dict(rel, created=rel['created'] + 1), dict(fr, seq=20, release=None), [A], [D]),
}
for n, c in cases.items():
    d = 'irepo-%s/beta' % n; os.makedirs(d); os.symlink(os.path.abspath('repots/beta/bundles'), d + '/bundles')
    open(d + '/index.ferry-index', 'wb').write(build(*c))
def ent(f, fr, to, size): return {'file': f, 'from': fr, 'to': to, 'size': size, 'blake3': bytes(32), 'id': bytes([to]) * 32}
for name, bl, latest in (
    ('ties', [ent('a-full-1.ferry', None, 1, 100), ent('z-1-2.ferry', 1, 2, 50), ent('b-full-3.ferry', None, 3, 250),
              ent('x-1-3.ferry', 1, 3, 100), ent('y-2-3.ferry', 2, 3, 50), ent('m-2-4.ferry', 2, 4, 10), ent('n-3-4.ferry', 3, 4, 10),
              ent('c-3-5.ferry', 3, 5, 5), ent('d-4-5.ferry', 4, 5, 0)], 5),
    ('lex', [ent('a-full-1.ferry', None, 1, 100), ent('p.ferry', 1, 2, 50), ent('q.ferry', 1, 3, 50), ent('b.ferry', 2, 4, 50),
             ent('a.ferry', 3, 4, 50), ent('pp.ferry', 4, 6, 1), ent('p5.ferry', 4, 5, 0), ent('p6.ferry', 5, 6, 1),
             ent('full-6.ferry', None, 6, 201)], 6)):
    bl.sort(key=lambda b: (b['to'], -1 if b['from'] is None else b['from'], b['file']))
    r = {'format': 1, 'channel': 'beta', 'seq': 5, 'created': now, 'expires': None, 'latest': latest, 'timestamp_keys': [], 'bundles': bl}
    f = {'format': 1, 'channel': 'beta', 'release': None, 'release_seq': 5, 'seq': 30, 'issued': now, 'expires': now + 3600}
    os.makedirs('irepo-%s/beta/bundles' % name); open('irepo-%s/beta/index.ferry-index' % name, 'wb').write(build(r, f, [A], [A]))
EOF
mkdir -p tg/e2 tg/b1
for n in same mixmatch seqmismatch expired inallow relexpired fresh_by_B fresh_by_A fresh_by_C rel_by_D rel_by_AB fresh_none; do
  ref=$($A update irepo-$n --target tg/e2 --channel beta --trust A.pub --dry-run --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('accept' if d['exit_code']==0 else 'refuse')")
  $R2 index irepo-$n beta --trust A.pub >/dev/null 2>&1 && mine=accept || mine=refuse
  [ "$ref" = "$mine" ] && ok "index '$n': both $ref" || bad "index '$n': ferry-apply $ref, reader2 $mine"
done
$A -q update irepo-rel_by_AB --target tg/b1 --channel beta --trust A.pub --to 1 >/dev/null
for n in fresh_by_C same samerelseq rel_by_AB; do
  ref=$($A update irepo-$n --target tg/b1 --trust A.pub --dry-run --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('accept' if d['exit_code']==0 else 'refuse')")
  $R2 index irepo-$n beta --trust A.pub --state tg/b1/.ferry --installed 1 >/dev/null 2>&1 && mine=accept || mine=refuse
  [ "$ref" = "$mine" ] && ok "accepted record, index '$n': both $ref" || bad "accepted record '$n': ferry-apply $ref, reader2 $mine"
done
for repo in ties lex; do for to in 2 3 4 5 6; do for t in e2 b1; do
  [ $repo = ties ] && [ $to = 6 ] && continue
  ch=""; inst=""; [ $t = e2 ] && ch="--channel beta"; [ $t = b1 ] && inst="--installed 1"
  ref=$($A update irepo-$repo --target tg/$t --trust A.pub $ch --to $to --dry-run --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print([p['file'] for p in d.get('path') or []])")
  mine=$($R2 index irepo-$repo beta --trust A.pub $inst --to $to | python3 -c "import json,sys; d=json.load(sys.stdin); print([p['file'] for p in d['path'] or []])")
  [ "$ref" = "$mine" ] && ok "crafted '$repo' $t -> $to: $mine" || bad "crafted '$repo' $t -> $to: ref $ref mine $mine"
done; done; done

echo "== 6. key rotation (§9)"
$B -q build --new vt/1 --key A.secret --version 1 --channel rot --out rot1.ferry
$B -q build --old vt/1 --new vt/2 --key A.secret --version 2 --base-version 1 --channel rot --rotate-add C.pub --rotate-add D.pub --rotate-retire $(echo $idA | tr a-f A-F) --rotate-threshold 2 --out rot2.ferry
$B -q build --old vt/2 --new vt/3 --key A.secret --key C.secret --version 3 --base-version 2 --channel rot --out rot3a.ferry
$B -q build --old vt/2 --new vt/3 --key C.secret --version 3 --base-version 2 --channel rot --out rot3c.ferry
$B -q build --old vt/2 --new vt/3 --key C.secret --key D.secret --version 3 --base-version 2 --channel rot --out rot3cd.ferry
mkdir -p tg/r; $A -q apply rot1.ferry --target tg/r --trust A.pub --channel rot >/dev/null; $A -q apply rot2.ferry --target tg/r --trust A.pub >/dev/null
mkdir -p pol/A3 pol/A1 pol/A1r; cp A.pub pol/A3; cp A.pub pol/A1; cp A.pub pol/A1r
echo "threshold 3" > pol/A3/policy; echo "threshold 1" > pol/A1/policy; printf 'retire %s\n' $(awk '{print $2}' D.pub) > pol/A1r/policy
for tr in A.pub pol/A3 pol/A1 pol/A1r; do for b in rot3a rot3c rot3cd; do
  ref=$($A plan $b.ferry --target tg/r --trust $tr --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('met' if d['exit_code']==0 else 'short')")
  mine=$($R2 policy $b.ferry --trust $tr --state tg/r/.ferry | python3 -c "import json,sys; print('met' if json.load(sys.stdin)['met'] else 'short')")
  [ "$ref" = "$mine" ] && ok "rotation: $b with --trust $tr: $ref" || bad "rotation $b $tr: ref $ref mine $mine"
done; done
echo; [ $fail = 0 ] && echo "ALL OK" || echo "SOME CHECKS FAILED"
exit $fail
