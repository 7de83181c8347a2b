#!/bin/sh
# A ferry signer command backed by an ed25519 key that OpenSSL 3 holds (a PEM file here; an
# engine- or provider-backed key works the same way with the matching -inkey/-keyform).
#
#   openssl genpkey -algorithm ed25519 -out k.pem          # once
#   ferry-build pubkey --signer-command 'examples/signers/openssl-signer.sh k.pem' --out k.pub
#   ferry-build sign FILE --signer-command 'examples/signers/openssl-signer.sh k.pem'
#
# Protocol (bundle-format.md §3.6): ferry writes the 51-byte message to sign on stdin and closes
# it; the command writes the 32-byte public key, then the 64-byte ed25519 signature, on stdout
# (96 bytes, nothing else). Prompts and errors go to stderr. A non-zero exit is a failure.
#
# `openssl pkeyutl -sign -rawin` cannot read an ed25519 message from stdin ("unable to determine
# file size for oneshot operation"): the message is spooled to a private temporary file first.
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 KEY.pem" >&2
    exit 2
fi
key=$1
umask 077
t=$(mktemp)
trap 'rm -f "$t"' EXIT
cat >"$t"
# The public key: the last 32 bytes of its DER SubjectPublicKeyInfo (a fixed 12-byte prefix).
openssl pkey -in "$key" -pubout -outform DER | tail -c 32
openssl pkeyutl -sign -rawin -inkey "$key" -in "$t"
