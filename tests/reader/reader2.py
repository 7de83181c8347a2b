#!/usr/bin/env python3
"""Extensions of reader.py, written from bundle-format.md only: split bundles (§2.3), trust
policies with several signatures (§3.2-§3.4, §9), encrypted bundles (§4.10), signing requests and
signature files (§3.5), channel indexes and update path choice (§18), rotation (§9).

usage:
  reader2.py bundle BUNDLE --trust FILE|DIR [--identity F]... [--old OLD --out OUT --expect NEW]
                 [--json]            (BUNDLE may be NAME of a split bundle or NAME.000)
  reader2.py policy BUNDLE --trust FILE|DIR        evaluate the policy, print inspect-like JSON
  reader2.py request REQ [--key K.pub] [--sig SIG]  parse/verify a signing request (+ signature file)
  reader2.py sigfile SIG --bundle BUNDLE            check a signature file against a bundle
  reader2.py index REPO CHANNEL --trust DIR [--installed V] [--to V] [--now T] [--verify-bundles]
"""
import argparse
import heapq
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
from cryptography.exceptions import InvalidTag

import reader as R
import ferrycbor as cbor
from reader import Refused, b3, derive_key, variant, LIM
from ed25519strict import verify_strict, decode as ed_decode

# ------------------------------------------------------------------ split bundles (§2.3)


def open_source(path):
    """Returns (bytes, parts) where parts = [(name, start, end)]; one part for a plain bundle."""
    name = None
    if path.endswith(".000"):
        name = path[:-4]
    elif not os.path.lexists(path) and os.path.lexists(path + ".000"):
        name = path
    if name is None:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("%s is not a regular file" % path)
        d = open(path, "rb").read()
        return d, [(path, 0, len(d))]
    chunks, parts, off, i = [], [], 0, 0
    while True:
        pn = "%s.%03d" % (name, i)
        if not os.path.lexists(pn):
            nxt = "%s.%03d" % (name, i + 1)
            if os.path.lexists(nxt):
                raise Refused("split bundle part %s is missing (%s exists)" % (pn, nxt))
            break
        st = os.lstat(pn)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("split bundle part %s is not a regular file" % pn)
        b = open(pn, "rb").read()
        chunks.append(b)
        parts.append((pn, off, off + len(b)))
        off += len(b)
        i += 1
    sizes = [e - s for _, s, e in parts]
    # every part but the last has the same size P; the last 1..P
    if len(sizes) > 1 and (len(set(sizes[:-1])) != 1 or not 1 <= sizes[-1] <= sizes[0]):
        R.note("split parts have unequal sizes %s" % sizes)
    R.note("split bundle %s: %d part(s) of %s bytes" % (name, len(parts), sizes))
    return b"".join(chunks), parts


def part_of(parts, a, b):
    return [n for n, s, e in parts if s < b and a < e]


# ------------------------------------------------------------------ key lines (§3.1, §4.10)

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
ID16 = re.compile(r"^[0-9a-f]{16}$")


def key_line(path, tag, idfun, maxbytes=4096):
    raw = open(path, "rb").read(maxbytes + 1)
    if len(raw) > maxbytes:
        raise Refused("%s: over %d bytes" % (path, maxbytes))
    f = raw.split()
    if len(f) != 3 or f[0] != tag.encode():
        raise Refused("%s: not a %s file (%d fields)" % (path, tag, len(f)))
    kid, hx = f[1].decode("ascii", "replace"), f[2].decode("ascii", "replace")
    if not HEX64.match(hx) or not ID16.match(kid):
        raise Refused("%s: malformed" % path)
    k = bytes.fromhex(hx)
    if idfun(k) != kid:
        raise Refused("%s: key id %s does not match the key (%s)" % (path, kid, idfun(k)))
    return kid, k


def load_pub(path):
    kid, pk = key_line(path, "ferry-public-key-v1", R.key_id)
    if ed_decode(pk) is None:
        raise Refused("%s: not a curve point" % path)
    return kid, pk


def x25519_pub(s):
    return X25519PrivateKey.from_private_bytes(s).public_key().public_bytes_raw()


def recipient_id(r):
    return derive_key("ferry recipient id v1", r)[:8].hex()


def load_identity(path):
    kid, s = key_line(path, "ferry-identity-v1", lambda s: recipient_id(x25519_pub(s)))
    return kid, s


def load_recipient(path):
    return key_line(path, "ferry-recipient-v1", recipient_id)


# ------------------------------------------------------------------ trust policy (§9)


class Policy:
    def __init__(self):
        self.keys = {}        # id -> pk
        self.threshold = 1
        self.retired = set()
        self.files = []

    def status(self, pk):
        kid = R.key_id(pk)
        if kid in self.retired:
            return "retired"
        if kid in self.keys and self.keys[kid] == pk:
            return "trusted"
        return "unknown"

    def evaluate(self, signers):
        st = [{"key_id": R.key_id(pk), "status": self.status(pk)} for pk in signers]
        trusted = sum(1 for s in st if s["status"] == "trusted")
        return {"signers": st, "trusted": trusted, "threshold": self.threshold,
                "met": trusted >= self.threshold, "short_by": max(0, self.threshold - trusted)}

    def add_policy_text(self, text, where):
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if line[0] == "threshold" and len(line) == 2 and line[1].isdigit() and int(line[1]) >= 1:
                self.threshold = int(line[1])
            elif line[0] == "retire" and len(line) == 2 and re.match(r"^[0-9a-fA-F]{16}$", line[1]):
                self.retired.add(line[1].lower())
            else:
                raise Refused("%s line %d: unknown directive %r" % (where, n, " ".join(line)))


def load_policy(path, extra_dirs=()):
    p = Policy()
    for d in [path] + list(extra_dirs):
        if os.path.isdir(d):
            for fn in sorted(os.listdir(d)):
                full = os.path.join(d, fn)
                if fn.endswith(".pub") and os.path.isfile(full):
                    kid, pk = load_pub(full)
                    p.keys[kid] = pk
                    p.files.append(fn)
            pol = os.path.join(d, "policy")
            if os.path.isfile(pol):
                p.add_policy_text(open(pol, encoding="utf-8").read(), pol)
        elif os.path.exists(d):
            kid, pk = load_pub(d)
            p.keys[kid] = pk
    return p


# ------------------------------------------------------------------ signature members (§3.2)

PREFIX = b"ferry-v6 bundle id\0"


def decode_sig_member(sigm, what="signature member"):
    if len(sigm) > 4096:
        raise Refused("%s over 4096 bytes" % what)
    try:
        sigs = cbor.loads(sigm)
    except cbor.CborError as e:
        raise Refused("%s: %s" % (what, e))
    if not isinstance(sigs, list) or len(sigs) > LIM["max_signatures"]:
        raise Refused("%s is not an array of at most 16 pairs" % what)
    for pr in sigs:
        if not (isinstance(pr, list) and len(pr) == 2 and isinstance(pr[0], bytes) and len(pr[0]) == 32
                and isinstance(pr[1], bytes) and len(pr[1]) == 64):
            raise Refused("%s: bad pair" % what)
    if cbor.dumps(sigs) != sigm:
        raise Refused("%s not canonical" % what)
    keys = [pr[0] for pr in sigs]
    for a, b in zip(keys, keys[1:]):
        if a == b:
            raise Refused("key %s signs twice" % R.key_id(a))
        if a > b:
            raise Refused("signatures are not sorted by public key")
    return sigs


def verify_all(sigs, msg):
    for pk, sg in sigs:
        ok, why = verify_strict(pk, sg, msg)
        if not ok:
            raise Refused("signature by key %s does not verify (%s)" % (R.key_id(pk), why))
    return [pk for pk, _ in sigs]


# ------------------------------------------------------------------ bundle head (§7 steps 1-4)


def read_head(data):
    M, mstart, pos = R.read_member(data, 0, b"ferry-v6/manifest.cbor")
    if M > LIM["max_manifest_bytes"]:
        raise Refused("manifest member over max_manifest_bytes")
    member = data[mstart:mstart + M]
    Ssz, sstart, pos = R.read_member(data, pos, b"ferry-v6/signatures.cbor")
    sigm = data[sstart:sstart + Ssz]
    bid = b3(member)
    sigs = decode_sig_member(sigm)
    signers = verify_all(sigs, PREFIX + bid)
    return member, bid, sigs, signers, pos, sstart, sstart + Ssz


# ------------------------------------------------------------------ encrypted bundles (§4.10)

MANIFEST_NONCE = b"\xff" * 12


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def check_outer(m):
    """§4.5/§4.10: counts, channel, frame sizes, then only the outer rules."""
    if m["format"] != 6:
        raise Refused("unsupported bundle format version %d" % m["format"])
    ch = m["channel"]
    if not 1 <= len(ch) <= LIM["max_channel_len"] or any(not 0x21 <= ord(c) <= 0x7e for c in ch):
        raise Refused("bad channel")
    if len(m["frames"]) > LIM["max_frames"]:
        raise Refused("too many frames")
    for i, fr in enumerate(m["frames"]):
        if fr["size"] > LIM["max_frame_bytes"] or fr["decoded"] > LIM["max_frame_decoded"]:
            raise Refused("frame %d over the size limits" % i)
    for k in ("entries", "old", "script", "hooks", "xattr_namespaces", "xattr_sets"):
        if m[k]:
            raise Refused("outer manifest: %s not empty" % k)
    if m["rotation"] is not None or m["tagged_digest"] is not None:
        raise Refused("outer manifest: rotation/tagged_digest set")
    s = m["sealed"]
    if not 1 <= len(s["recipients"]) <= LIM["max_recipients"]:
        raise Refused("outer manifest: %d recipients" % len(s["recipients"]))
    for st in s["recipients"]:
        if len(st["wrapped"]) != 48:
            raise Refused("stanza: wrapped is not 48 bytes")
    if not 16 < len(s["manifest"]) <= LIM["max_manifest_bytes"] + 16:
        raise Refused("sealed manifest size out of range")


def unwrap(sealed, identities):
    """identities: [(id, s)] -> payload key K (or Refused with exit 16 meaning)."""
    for st in sealed["recipients"]:
        E = st["ephemeral"]
        for rid, s in identities:
            priv = X25519PrivateKey.from_private_bytes(s)
            try:
                shared = priv.exchange(X25519PublicKey.from_public_bytes(E))
            except ValueError:      # cryptography refuses an all-zero shared secret
                continue
            if shared == bytes(32):
                continue
            Rr = x25519_pub(s)
            wk = hkdf(shared, E + Rr, b"ferry-v3 recipient")
            try:
                K = ChaCha20Poly1305(wk).decrypt(bytes(12), st["wrapped"], b"")
            except InvalidTag:
                continue
            R.note("stanza opened by identity %s" % rid)
            return K
    raise Refused("NO-IDENTITY: bundle is encrypted to %d recipient(s); no identity opens it"
                  % len(sealed["recipients"]))


def open_sealed(outer, identities):
    s = outer["sealed"]
    K = unwrap(s, identities)
    if derive_key("ferry-v3 payload key commitment", K) != s["commitment"]:
        raise Refused("payload key commitment does not match")
    try:
        inner_member = ChaCha20Poly1305(K).decrypt(MANIFEST_NONCE, s["manifest"], b"")
    except InvalidTag:
        raise Refused("inner manifest AEAD tag does not verify")
    if len(inner_member) > LIM["max_manifest_bytes"]:
        raise Refused("inner manifest member too large")
    m, cb = R.decode_manifest(inner_member)
    if m["sealed"] is not None:
        raise Refused("nested sealed manifest")
    for k in ("format", "version", "base", "channel", "created", "expires", "frames"):
        if m[k] != outer[k]:
            raise Refused("inner manifest disagrees with the outer one in %s" % k)
    R.check_structure(m)
    R.check_script(m)
    return K, m, inner_member


def frame_keystream_xor(K, i, data):
    nonce16 = (0).to_bytes(4, "little") + bytes(4) + i.to_bytes(8, "big")   # counter 0 || frame_nonce(i)
    c = Cipher(algorithms.ChaCha20(K, nonce16), mode=None).encryptor()
    return c.update(data)


# ------------------------------------------------------------------ payload (§2.2, §7 steps 7-8)


def layout_payload(data, pos, m, parts):
    def truncated(e):
        if len(parts) > 1:
            raise Refused("%s: split bundle part %s.%03d is missing" % (e, parts[0][0][:-4], len(parts)))

    frame_off = R.layout_payload(data, pos, m, truncated)
    for i, fr in enumerate(m["frames"]):
        b = data[frame_off[i]:frame_off[i] + fr["size"]]
        if b3(b) != fr["hash"]:
            raise Refused("frame %d (bytes %d..%d, in %s) does not match its hash in the manifest" % (
                i, frame_off[i], frame_off[i] + fr["size"], part_of(parts, frame_off[i], frame_off[i] + fr["size"])))
    return frame_off


def cmd_bundle(a):
    data, parts = open_source(a.bundle)
    member, bid, sigs, signers, pos, _, _ = read_head(data)
    pol = load_policy(a.trust, [os.path.join(a.state, "trust")] if a.state else [])
    tr = pol.evaluate(signers)
    print("  bundle id %s; %d signature(s) verified; trust %s" % (bid.hex(), len(signers), json.dumps(tr)))
    if not tr["met"]:
        raise Refused("bundle has %d trusted signature(s), the policy needs %d (short by %d)" % (
            tr["trusted"], tr["threshold"], tr["short_by"]))
    outer, _ = R.decode_manifest(member)
    K = None
    if outer["sealed"] is not None:
        check_outer(outer)
        print("  encrypted: %d recipient(s), outer manifest has %d frames" % (
            len(outer["sealed"]["recipients"]), len(outer["frames"])))
        ids = [load_identity(p) for p in (a.identity or [])]
        if not ids:
            frame_off = layout_payload(data, pos, outer, parts)
            print("  public part verified (no identity): frames' ciphertext hashes OK")
            return 0
        K, m, _ = open_sealed(outer, ids)
        print("  inner manifest: %d entries, %d old, %d steps" % (len(m["entries"]), len(m["old"]), len(m["script"])))
    else:
        m = outer
        R.check_structure(m)
        R.check_script(m)
    frame_off = layout_payload(data, pos, m, parts)
    print("  manifest v%d base %s channel %s rotation %s; %d frames verified over %d part(s)" % (
        m["version"], m["base"] and m["base"]["version"], m["channel"], m["rotation"], len(m["frames"]), len(parts)))
    if K is not None:
        # decrypt every frame (after its hash matched), into a plain buffer; the plain manifest view
        # given to reader.stage_and_apply carries the hash of the decrypted bytes.
        buf = bytearray(data)
        frames2 = []
        for i, fr in enumerate(m["frames"]):
            o = frame_off[i]
            plain = frame_keystream_xor(K, i, bytes(data[o:o + fr["size"]]))
            buf[o:o + fr["size"]] = plain
            frames2.append(dict(fr, hash=b3(plain)))
        data = bytes(buf)
        m = dict(m, frames=frames2)
    if not a.out:
        return 0
    return apply_to(m, data, frame_off, a)


def apply_to(m, data, frame_off, a):
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    return R.apply_tree(m, data, frame_off, a.out, a.old, a.expect)


def cmd_policy(a):
    data, parts = open_source(a.bundle)
    member, bid, sigs, signers, pos, _, _ = read_head(data)
    pol = load_policy(a.trust, [os.path.join(a.state, "trust")] if a.state else [])
    r = pol.evaluate(signers)
    print(json.dumps(r, sort_keys=True))
    return 0


# ------------------------------------------------------------------ offline signing (§3.5)


def parse_request(path):
    sz = os.path.getsize(path)
    if sz > LIM["max_manifest_bytes"] + 256:
        raise Refused("request too large")
    raw = open(path, "rb").read()
    try:
        d = cbor.loads(raw, max_string=LIM["max_manifest_bytes"] + 16)
    except cbor.CborError as e:
        raise Refused("request CBOR: %s" % e)
    if not isinstance(d, dict) or list(d) != ["format", "bundle_id", "message", "manifest"]:
        raise Refused("request: not the map {format, bundle_id, message, manifest}: %r" % list(d) if isinstance(d, dict) else "")
    if d["format"] != "ferry-signing-request-v1":
        raise Refused("request: format %r" % d["format"])
    if not (isinstance(d["bundle_id"], bytes) and len(d["bundle_id"]) == 32 and isinstance(d["message"], bytes)
            and isinstance(d["manifest"], bytes)):
        raise Refused("request: wrong types")
    if cbor.dumps(d) != raw:
        raise Refused("request: not canonical")
    if raw[:1 + 7 + 1 + 1 + 24] != b"\xa4\x66format\x78\x18ferry-signing-request-v1":
        raise Refused("request: prefix differs from the spec's")
    if b3(d["manifest"]) != d["bundle_id"]:
        raise Refused("the request was altered")
    if d["message"] != PREFIX + d["bundle_id"]:
        raise Refused("request: message is not prefix || id")
    m, _ = R.decode_manifest(d["manifest"])
    if m["sealed"] is not None:
        check_outer(m)
    else:
        R.check_structure(m)
        R.check_script(m)
    return d, m, len(raw)


SIGLINE = re.compile(rb"^ferry-signature-v1 ([0-9a-f]{64}) ([0-9a-f]{64}) ([0-9a-f]{128})\n$")


def parse_sigfile(path):
    raw = open(path, "rb").read(4097)
    if len(raw) > 4096:
        raise Refused("signature file over 4096 bytes")
    mt = SIGLINE.match(raw)
    if not mt:
        raise Refused("signature file: not the one-line form")
    return bytes.fromhex(mt.group(1).decode()), bytes.fromhex(mt.group(2).decode()), \
        bytes.fromhex(mt.group(3).decode()), len(raw)


def cmd_request(a):
    d, m, n = parse_request(a.request)
    over = len(n.to_bytes(8, "big")) if False else None
    extra = n - len(d["manifest"])
    print("  request OK: bundle id %s, manifest %d bytes, request %d bytes (+%d), version %d, %s" % (
        d["bundle_id"].hex(), len(d["manifest"]), n, extra, m["version"],
        "encrypted" if m["sealed"] is not None else "%d entries" % len(m["entries"])))
    if a.sig:
        bid, pk, sg, ln = parse_sigfile(a.sig)
        if bid != d["bundle_id"]:
            raise Refused("signature file is for bundle %s, not %s" % (bid.hex(), d["bundle_id"].hex()))
        ok, why = verify_strict(pk, sg, PREFIX + bid)
        if not ok:
            raise Refused("signature does not verify: %s" % why)
        print("  signature file OK (%d bytes) by key %s" % (ln, R.key_id(pk)))
        if a.key and load_pub(a.key)[1] != pk:
            raise Refused("signature file's key is not %s" % a.key)
    return 0


def cmd_sigfile(a):
    bid, pk, sg, ln = parse_sigfile(a.sig)
    data, parts = open_source(a.bundle)
    member, fbid, sigs, signers, pos, _, _ = read_head(data)
    if bid != fbid:
        raise Refused("is a signature for bundle %s, not for %s (bundle %s)" % (bid.hex(), a.bundle, fbid.hex()))
    ok, why = verify_strict(pk, sg, PREFIX + bid)
    if not ok:
        raise Refused("signature does not verify: %s" % why)
    print("  signature file OK (%d bytes) by key %s for bundle %s; already in bundle: %s" % (
        ln, R.key_id(pk), bid.hex(), any(p == pk and s == sg for p, s in sigs)))
    return 0


# ------------------------------------------------------------------ channel index (§18)

NAMECH = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_name(s, what, ferry=False):
    if not isinstance(s, str) or not NAMECH.match(s) or s.startswith(".") or (ferry and not s.endswith(".ferry")):
        raise Refused("index: bad %s %r" % (what, s))


def uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def decode_index(raw, channel=None):
    if len(raw) > 4 << 20:
        raise Refused("index over 4 MiB")
    try:
        top = cbor.loads(raw, max_string=4 << 20)
    except cbor.CborError as e:
        raise Refused("index CBOR: %s" % e)
    if not (isinstance(top, list) and len(top) == 4 and all(isinstance(x, bytes) for x in top)):
        raise Refused("index: not an array of four byte strings")
    if cbor.dumps(top) != raw:
        raise Refused("index: not canonical")
    rel_b, rsig_b, fresh_b, fsig_b = top
    try:
        rel = cbor.loads(rel_b, max_string=4 << 20)
        fresh = cbor.loads(fresh_b)
    except cbor.CborError as e:
        raise Refused("index part CBOR: %s" % e)
    if cbor.dumps(rel) != rel_b or cbor.dumps(fresh) != fresh_b:
        raise Refused("index part not canonical")
    RK = ["format", "channel", "seq", "created", "expires", "latest", "timestamp_keys", "bundles"]
    if not isinstance(rel, dict) or list(rel) != RK:
        raise Refused("release part keys %r" % (list(rel) if isinstance(rel, dict) else rel))
    if rel["format"] != 1:
        raise Refused("release format %r" % rel["format"])
    check_name(rel["channel"], "channel")
    if channel is not None and rel["channel"] != channel:
        raise Refused("release part's channel %r is not %r" % (rel["channel"], channel))
    for k in ("seq", "created", "latest"):
        if not uint(rel[k]):
            raise Refused("release %s" % k)
    if rel["expires"] is not None and not uint(rel["expires"]):
        raise Refused("release expires")
    tk = rel["timestamp_keys"]
    if not isinstance(tk, list) or len(tk) > 16 or any(not (isinstance(k, bytes) and len(k) == 32) for k in tk) \
            or any(a >= b for a, b in zip(tk, tk[1:])):
        raise Refused("timestamp_keys: not sorted unique bstr(32), at most 16")
    bl = rel["bundles"]
    if not isinstance(bl, list) or not 1 <= len(bl) <= 10000:
        raise Refused("bundles: 1..10000")
    BK = ["file", "from", "to", "size", "blake3", "id"]
    names = set()
    for b in bl:
        if not isinstance(b, dict) or list(b) != BK:
            raise Refused("bundle entry keys %r" % (list(b) if isinstance(b, dict) else b))
        check_name(b["file"], "file", ferry=True)
        if b["file"] in names:
            raise Refused("file %s twice" % b["file"])
        names.add(b["file"])
        if not uint(b["to"]) or not uint(b["size"]) or (b["from"] is not None and not uint(b["from"])):
            raise Refused("bundle entry ints")
        if b["from"] is not None and not b["from"] < b["to"]:
            raise Refused("bundle entry from >= to")
        for k in ("blake3", "id"):
            if not (isinstance(b[k], bytes) and len(b[k]) == 32):
                raise Refused("bundle entry %s" % k)
    sk = [(b["to"], -1 if b["from"] is None else b["from"], b["file"]) for b in bl]
    if any(x >= y for x, y in zip(sk, sk[1:])):
        raise Refused("bundles not sorted by (to, from null first, file)")
    if rel["latest"] != max(b["to"] for b in bl):
        raise Refused("latest is not the largest to")
    FK = ["format", "channel", "release", "release_seq", "seq", "issued", "expires"]
    if not isinstance(fresh, dict) or list(fresh) != FK:
        raise Refused("fresh part keys %r" % (list(fresh) if isinstance(fresh, dict) else fresh))
    if fresh["format"] != 1 or not isinstance(fresh["channel"], str) or not (
            isinstance(fresh["release"], bytes) and len(fresh["release"]) == 32) or \
            not all(uint(fresh[k]) for k in ("release_seq", "seq", "issued", "expires")):
        raise Refused("fresh part fields")
    rsigs = decode_sig_member(rsig_b, "release signatures")
    fsigs = decode_sig_member(fsig_b, "fresh signatures")
    return dict(rel_b=rel_b, rel=rel, fresh_b=fresh_b, fresh=fresh, rsigs=rsigs, fsigs=fsigs)


def verify_index(ix, pol, now, allowance=3600, accepted=None):
    rel, fresh = ix["rel"], ix["fresh"]
    rsigners = verify_all(ix["rsigs"], b"ferry-v4 index release\0" + b3(ix["rel_b"]))
    fsigners = verify_all(ix["fsigs"], b"ferry-v4 index fresh\0" + b3(ix["fresh_b"]))
    tr = pol.evaluate(rsigners)
    if not tr["met"]:
        raise Refused("release part: %d trusted signature(s), needs %d" % (tr["trusted"], tr["threshold"]))
    by_ts = any(pk in rel["timestamp_keys"] for pk in fsigners)
    if not by_ts and not pol.evaluate(fsigners)["met"]:
        raise Refused("freshness part signed by neither a timestamp key nor the policy")
    if fresh["release"] != b3(ix["rel_b"]) or fresh["release_seq"] != rel["seq"] or fresh["channel"] != rel["channel"]:
        raise Refused("mix-and-match: freshness part names another release part")
    if now > fresh["expires"] + allowance:
        raise Refused("index expired (fresh.expires %d)" % fresh["expires"])
    if rel["expires"] is not None and now > rel["expires"] + allowance:
        raise Refused("index expired (release.expires %d)" % rel["expires"])
    if accepted:
        if rel["seq"] < accepted["release_seq"] or \
                (rel["seq"] == accepted["release_seq"] and b3(ix["rel_b"]) != accepted["release"]) or \
                fresh["seq"] < accepted["fresh_seq"]:
            raise Refused("rollback or freeze")
    return dict(by_timestamp_key=by_ts, release_signers=tr, fresh_signers=[R.key_id(k) for k in fsigners])


def choose_path(bundles, installed, goal, replace=False, cached=()):
    """§18.5 path choice: fewest bytes, then fewest bundles, then lexicographically smallest names."""
    start = installed   # None = empty target
    best = {start: (0, 0, [])}
    heap = [(0, 0, [], start)]
    done = set()
    while heap:
        cost, n, names, v = heapq.heappop(heap)
        if v in done:
            continue
        done.add(v)
        if v == goal:
            return [next(b for b in bundles if b["file"] == f) for f in names]
        for b in bundles:
            if b["from"] == v and v is not None:
                ok = True
            elif b["from"] is None:
                ok = v is None or (replace and v < b["to"])
            else:
                ok = False
            if not ok or b["to"] > goal:
                continue
            c = 0 if b["file"] in cached else b["size"]
            cand = (cost + c, n + 1, names + [b["file"]])
            if b["to"] not in best or cand < best[b["to"]]:
                best[b["to"]] = cand
                heapq.heappush(heap, (cand[0], cand[1], cand[2], b["to"]))
    return None


def cmd_index(a):
    raw = open(os.path.join(a.repo, a.channel, "index.ferry-index"), "rb").read()
    ix = decode_index(raw, a.channel)
    pol = load_policy(a.trust)
    now = a.now if a.now is not None else int(time.time())
    accepted = None
    if a.state:
        ap = os.path.join(a.state, "index-%s.cbor" % a.channel)
        if os.path.exists(ap):
            raw_acc = open(ap, "rb").read()
            accepted = cbor.loads(raw_acc)
            if list(accepted) != ["channel", "release_seq", "release", "fresh_seq"] or cbor.dumps(accepted) != raw_acc \
                    or accepted["channel"] != a.channel:
                raise Refused("accepted record %s malformed" % ap)
    info = verify_index(ix, pol, now, accepted=accepted)
    rel = ix["rel"]
    out = dict(channel=rel["channel"], release_seq=rel["seq"], fresh_seq=ix["fresh"]["seq"], latest=rel["latest"],
               expires=ix["fresh"]["expires"], by_timestamp_key=info["by_timestamp_key"],
               bundles=[dict(b, blake3=b["blake3"].hex()[:16], id=b["id"].hex()[:16]) for b in rel["bundles"]])
    goal = a.to if a.to is not None else rel["latest"]
    if a.installed is not None and a.installed >= goal:
        out["path"] = []
        out["up_to_date"] = a.installed == goal
        out["bytes_planned"] = 0 if out["up_to_date"] else None     # above a --to goal: exit 5
    else:
        p = choose_path(rel["bundles"], a.installed, goal, replace=a.replace)
        out["path"] = None if p is None else [dict(file=b["file"], **{"from": b["from"]}, to=b["to"], size=b["size"])
                                              for b in p]
        out["bytes_planned"] = None if p is None else sum(b["size"] for b in p)
        if a.simulate:
            # §18.5 step 7 + "Path choice": a bundle the repository lacks is left out and the path
            # chosen again from the version reached so far.
            cur, applied, missing, avail = a.installed, [], [], list(rel["bundles"])
            while cur != goal:
                p = choose_path(avail, cur, goal, replace=a.replace)
                if p is None:
                    break
                for b in p:
                    if not os.path.isfile(os.path.join(a.repo, a.channel, "bundles", b["file"])):
                        missing.append(b["file"])
                        avail = [x for x in avail if x["file"] != b["file"]]
                        break
                    applied.append(b["to"])
                    cur = b["to"]
            out["simulated"] = dict(reached=cur, applied=applied, missing=missing, exit=0 if cur == goal else 17)
    if a.verify_bundles:
        for b in rel["bundles"]:
            fn = os.path.join(a.repo, a.channel, "bundles", b["file"])
            d = open(fn, "rb").read()
            if len(d) != b["size"] or b3(d) != b["blake3"]:
                raise Refused("%s: size/BLAKE3 differ from the index" % b["file"])
            member, bid, sigs, signers, pos, _, _ = read_head(d)
            if bid != b["id"]:
                raise Refused("%s: bundle id differs" % b["file"])
            m, _ = R.decode_manifest(member)
            if m["version"] != b["to"] or (m["base"] and m["base"]["version"]) != b["from"]:
                raise Refused("%s: version/base differ from the entry" % b["file"])
            if not pol.evaluate(signers)["met"]:
                raise Refused("%s: policy not met" % b["file"])
        out["bundles_checked"] = len(rel["bundles"])
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


def main():
    ap = argparse.ArgumentParser()
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("bundle")
    p.add_argument("bundle")
    p.add_argument("--trust", required=True)
    p.add_argument("--identity", action="append")
    p.add_argument("--state", help="target state directory: adds STATE/trust/ (rotations, §9)")
    p.add_argument("--old")
    p.add_argument("--out")
    p.add_argument("--expect")
    p = sp.add_parser("policy")
    p.add_argument("bundle")
    p.add_argument("--trust", required=True)
    p.add_argument("--state", help="target state directory: adds STATE/trust/ (rotations, §9)")
    p = sp.add_parser("request")
    p.add_argument("request")
    p.add_argument("--sig")
    p.add_argument("--key")
    p = sp.add_parser("sigfile")
    p.add_argument("sig")
    p.add_argument("--bundle", required=True)
    p = sp.add_parser("index")
    p.add_argument("repo")
    p.add_argument("channel")
    p.add_argument("--trust", required=True)
    p.add_argument("--installed", type=int)
    p.add_argument("--to", type=int)
    p.add_argument("--now", type=int)
    p.add_argument("--replace", action="store_true")
    p.add_argument("--verify-bundles", action="store_true")
    p.add_argument("--simulate", action="store_true")
    p.add_argument("--state", help="state directory holding index-CHANNEL.cbor (the accepted record)")
    a = ap.parse_args()
    return {"bundle": cmd_bundle, "policy": cmd_policy, "request": cmd_request, "sigfile": cmd_sigfile,
            "index": cmd_index}[a.cmd](a)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Refused as e:
        print("  REFUSED: %s" % e)
        sys.exit(16 if str(e).startswith("NO-IDENTITY") else 3)
