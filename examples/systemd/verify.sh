#!/usr/bin/env bash
# Check the example units with systemd-analyze, if it is installed (CI runs this).
set -euo pipefail
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not installed: skipping unit check"; exit 0; }
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/debug/ferry-apply}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$here"/ferry-inbox.service "$here"/ferry-inbox.path "$here"/ferry-update.service "$here"/ferry-update.timer "$tmp/"
cp "$here"/ferry-usb@.service "$tmp/ferry-usb@sdb1.service"
cp "$here"/ferry-update-stick@.service "$tmp/ferry-update-stick@sdb1.service"
sed -i "s#/usr/bin/ferry-apply#$bin#" "$tmp"/*.service
(cd "$tmp" && systemd-analyze verify ferry-inbox.service ferry-inbox.path ferry-usb@sdb1.service \
    ferry-update.service ferry-update.timer ferry-update-stick@sdb1.service)
# The update unit's command line, with the example environment, parses as `ferry-apply update`.
if [ -x "$bin" ]; then
    set -a; . "$here/ferry-update.env"; set +a
    # shellcheck disable=SC2086
    "$bin" update --help >/dev/null
    out="$("$bin" update "$FERRY_UPDATE_SOURCE" --target "$tmp/none" --trust "$tmp/none.pub" \
        --channel "$FERRY_UPDATE_CHANNEL" --json $FERRY_UPDATE_OPTIONS 2>/dev/null || true)"
    case "$out" in
        *'"command":"update"'*) ;;
        *) echo "ferry-apply update did not accept the unit's command line: $out"; exit 1 ;;
    esac
fi
echo "systemd units OK"
