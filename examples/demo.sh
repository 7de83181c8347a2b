#!/usr/bin/env bash
# The main job end to end on the example trees: keys, a full bundle (v1), a delta bundle (v1→v2),
# verify, inspect, apply both to a fresh target, status, and a check that the target equals v2.
# Usage: bash examples/demo.sh      (everything happens under ./demo, recreated each run)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ferry-builder -p ferry-applier
B=target/release
D=demo
rm -rf "$D"
mkdir -p "$D"
# git keeps neither empty directories, hardlinks nor mtimes: restore them in working copies.
for t in v1 v2; do
  cp -a "examples/$t" "$D/$t"
  mkdir -p "$D/$t/var/empty"
  ln -f "$D/$t/share/doc/README" "$D/$t/share/doc/README.hardlink"
  find "$D/$t" -exec touch -h -d @1700000000 {} +
done
chmod 600 "$D/v2/etc/app/app.conf"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "ferry-build keygen (the secret key encrypted with a passphrase; a demo passes it in the environment)"
export FERRY_PASSPHRASE="demo passphrase, use a real one"
$B/ferry-build keygen --out "$D/demo-key"
cat "$D/demo-key.pub"
cut -d' ' -f1-3 "$D/demo-key.secret"

step "ferry-build build: full bundle of v1, delta bundle v1 -> v2 (with a restart hook)"
$B/ferry-build build --new "$D/v1" --key "$D/demo-key.secret" --version 1 --out "$D/v1.ferry"
$B/ferry-build build --old "$D/v1" --new "$D/v2" --key "$D/demo-key.secret" --version 2 --base-version 1 \
  --hook 'bin/**=echo "restarting app after update to $FERRY_VERSION"' --out "$D/v2.ferry"
ls -l "$D"/*.ferry

step "ferry-apply verify"
$B/ferry-apply verify "$D/v2.ferry" --trust "$D/demo-key.pub"

step "ferry-apply inspect (no key: unverified)"
$B/ferry-apply inspect "$D/v2.ferry"

step "ferry-apply apply v1 (full) then v2 (delta) to $D/target"
mkdir "$D/target"
$B/ferry-apply apply "$D/v1.ferry" --target "$D/target" --trust "$D/demo-key.pub"
$B/ferry-apply apply "$D/v2.ferry" --target "$D/target" --trust "$D/demo-key.pub" --json
cat "$D/target/.ferry/hooks.log"

step "ferry-apply status"
$B/ferry-apply status --target "$D/target"

step "result: $D/target equals $D/v2"
diff -r --no-dereference -x .ferry "$D/v2" "$D/target" && echo "identical"
"$D/target/bin/app"
