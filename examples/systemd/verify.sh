#!/usr/bin/env bash
# Check the example units with systemd-analyze, if it is installed (CI runs this).
set -euo pipefail
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not installed: skipping unit check"; exit 0; }
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/debug/ferry-apply}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$here"/ferry-inbox.service "$here"/ferry-inbox.path "$tmp/"
cp "$here"/ferry-usb@.service "$tmp/ferry-usb@sdb1.service"
sed -i "s#/usr/bin/ferry-apply#$bin#" "$tmp"/*.service
(cd "$tmp" && systemd-analyze verify ferry-inbox.service ferry-inbox.path ferry-usb@sdb1.service)
echo "systemd units OK"
