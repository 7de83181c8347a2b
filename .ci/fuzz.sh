#!/bin/sh
# Fuzz every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) seconds each, starting from
# the checked-in seed corpus (fuzz/corpus/TARGET, left unchanged: new inputs go to a temporary
# directory). Exits non-zero if any target crashes, panics, leaks, runs out of memory or takes
# over 10 s on one input; the reproducer is left in fuzz/artifacts/TARGET/.
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1
# allows them.
set -eu
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
status=0
for t in $(cargo fuzz list); do
    work=$(mktemp -d)
    echo "== fuzzing $t for ${secs}s"
    if ! cargo fuzz run "$t" "$work" "corpus/$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "!! $t failed; reproducer in fuzz/artifacts/$t/" >&2
        status=1
    fi
    rm -rf "$work"
done
exit $status
