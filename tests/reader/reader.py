#!/usr/bin/env python3
"""Independent reader of the ferry bundle format, version 6, written from bundle-format.md only.

usage: reader.py --trust KEY.pub BUNDLE [--old OLDTREE] [--out OUTDIR] [--expect NEWTREE]
"""
import argparse
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import sys
import zlib

import blake3
import zstandard

import ferrycbor as cbor
from ed25519strict import verify_strict, decode as ed_decode


class Refused(Exception):
    pass


def b3(data):
    return blake3.blake3(data).digest()


def derive_key(context, data):
    return blake3.blake3(data, derive_key_context=context).digest()


LOG = []


def note(msg):
    LOG.append(msg)
    print("  " + msg)


# ---------------------------------------------------------------- limits (§8)
LIM = dict(
    max_manifest_bytes=256 << 20, max_manifest_decoded=256 << 20, max_manifest_items=64 << 20,
    max_manifest_depth=16, max_signatures=16, max_entries=500000, max_path_len=4096,
    max_path_depth=256, max_frames=1 << 20, max_pieces=2097152, max_extents_per_file=65536,
    max_extents=2097152, max_frame_bytes=1 << 30, max_frame_decoded=1 << 30, max_window_log=28,
    max_lzma_dict_log=26, max_regzip_raw=64 << 20, max_symlink_len=4096, max_hooks=64,
    max_hook_glob=256, max_hook_command=4096, max_channel_len=128, max_rotation_keys=64,
    max_xattr_sets=500000, max_xattrs_per_set=128, max_xattr_name=255, max_xattr_value=65536,
    max_xattr_bytes=64 << 20, max_manifest_string=64 << 10, max_recipients=64,
)
PACK_BYTES = 1 << 30

# ---------------------------------------------------------------- container (§2)


def canonical_header(name, size):
    assert len(name) <= 99
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    ck = sum(h)
    h[148:156] = b"%06o\0 " % ck
    return bytes(h)


def read_member(data, pos, name):
    hdr = data[pos:pos + 512]
    if len(hdr) < 512:
        raise Refused("truncated header at %d" % pos)
    if pos == 0:
        if not hdr.startswith(b"ferry-v"):
            raise Refused("not a ferry bundle")
        ver = hdr[7:hdr.index(b"/")] if b"/" in hdr[:20] else b"?"
        if ver != b"6":
            raise Refused("unsupported format version %s" % ver.decode(errors="replace"))
    try:
        size = int(hdr[124:135].decode("ascii"), 8)
    except ValueError:
        raise Refused("bad size field at %d" % (pos + 124))
    want = canonical_header(name, size)
    if hdr != want:
        off = next(i for i in range(512) if hdr[i] != want[i])
        raise Refused("non-canonical header for %s: first difference at offset %d" % (name, pos + off))
    start = pos + 512
    end = start + size
    padded = start + (size + 511) // 512 * 512
    if padded > len(data):
        raise Refused("truncated member %s" % name)
    if any(data[end:padded]):
        raise Refused("non-zero padding after %s" % name)
    return size, start, padded


# ---------------------------------------------------------------- keys (§3.1)


def load_pub(path):
    raw = open(path, "rb").read()
    if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
        raise Refused("key file must be one LF-terminated line")
    parts = raw[:-1].split(b" ")
    if len(parts) != 3 or parts[0] != b"ferry-public-key-v1":
        raise Refused("not a ferry public key file")
    kid, hexkey = parts[1].decode(), parts[2].decode()
    if len(kid) != 16 or len(hexkey) != 64 or kid != kid.lower() or hexkey != hexkey.lower():
        raise Refused("malformed key file")
    pk = bytes.fromhex(hexkey)
    if key_id(pk) != kid:
        raise Refused("key id does not match key")
    if ed_decode(pk) is None:
        raise Refused("public key is not a curve point")
    return pk


def key_id(pk):
    return derive_key("ferry key id v1", pk)[:8].hex()


PREFIX = b"ferry-v6 bundle id\0"

# ---------------------------------------------------------------- manifest schema (§4)

U8, U32, U64, I64 = ("uint", 255), ("uint", 2 ** 32 - 1), ("uint", 2 ** 64 - 1), ("i64",)
S = {
    "Manifest": [("format", U32), ("version", U64), ("base", ("opt", "Base")), ("channel", "text"),
                 ("created", U64), ("expires", ("opt", U64)), ("entries", ("list", "Entry")),
                 ("old", ("list", "OldEntry")), ("tagged_digest", ("opt", "b32")),
                 ("frames", ("list", "Frame")), ("script", ("list", "Step")), ("hooks", ("list", "Hook")),
                 ("rotation", ("opt", "Rotation")), ("xattr_namespaces", ("list", "text")),
                 ("xattr_sets", ("list", ("list", "Xattr"))), ("sealed", ("opt", "Sealed"))],
    "Base": [("version", ("opt", U64)), ("tree", "b32")],
    "Meta": [("mode", U32), ("uid", U32), ("gid", U32), ("mtime_ns", I64), ("xattrs", ("opt", U32))],
    "Xattr": [("name", "bytes"), ("value", "bytes")],
    "Entry": [("path", "path"), ("meta", "Meta"), ("kind", "Kind")],
    "File": [("size", U64), ("hash", "b32", "absent"), ("content", "Content"), ("config", "bool"),
             ("extents", ("list", "Extent"), "absent"), ("gzip", "Gzip", "absent")],
    # `gzip` is NOT in the spec's schema (finding F3); position and types taken from the bytes.
    "Gzip": [("header", "bytes"), ("flavor", "Flavor"), ("level", U8), ("raw", U64)],
    "Symlink": [("target", "bytes")],
    "Hardlink": [("primary", "path")],
    "Dev": [("rdev", U64)],
    "Extent": [("offset", U64), ("len", U64)],
    "Copy": [("from", "path")],
    "Piece": [("frame", U32), ("offset", U64), ("len", U64), ("method", "Method")],
    "Patch": [("base", "path"), ("offset", U64), ("len", U64)],
    "Lzma": [("filter", "Bcj"), ("dict_log", U8)],
    "BsdiffLzma": [("base", "path"), ("offset", U64), ("len", U64), ("dict_log", U8)],
    "BsdiffSplit": [("base", "path"), ("offset", U64), ("len", U64), ("dict_log", U8), ("control", U64),
                    ("control_size", U64), ("copy", U64), ("copy_size", U64)],
    "OldEntry": [("path", "path"), ("meta", "Meta"), ("kind", "OldKind")],
    "OldFile": [("size", U64), ("hash", "b32")],
    "Tagged": [("size", U64), ("tag", "b8")],
    "Frame": [("size", U64), ("hash", "b32"), ("decoded", U64)],
    "Step": [("op", "Op"), ("path", "path")],
    "Hook": [("glob", "text"), ("command", "text"), ("timeout_secs", U32)],
    "Rotation": [("add", ("list", "b32")), ("retire", ("list", "text")), ("threshold", ("opt", U32))],
    "Sealed": [("recipients", ("list", "Stanza")), ("commitment", "b32"), ("manifest", "bytes")],
    "Stanza": [("ephemeral", "b32"), ("wrapped", "bytes")],
}
E = {
    "Kind": {"File": "File", "Dir": None, "Symlink": "Symlink", "Hardlink": "Hardlink", "Fifo": None,
             "CharDev": "Dev", "BlockDev": "Dev"},
    "OldKind": {"File": "OldFile", "Dir": None, "Symlink": "Symlink", "Fifo": None, "CharDev": "Dev",
                "BlockDev": "Dev", "Tagged": "Tagged"},
    "Content": {"Unchanged": None, "Empty": None, "Copy": "Copy", "Pieces": ("list", "Piece")},
    "Method": {"Zstd": None, "Patch": "Patch", "Bsdiff": "Patch", "Lzma": "Lzma", "BsdiffLzma": "BsdiffLzma",
               "BsdiffSplit": "BsdiffSplit"},
    "Bcj": {k: None for k in ["None", "X86", "PowerPc", "Ia64", "Arm", "ArmThumb", "Sparc", "Arm64", "RiscV"]},
    "Op": {k: None for k in ["Mkdir", "Place", "SetMeta", "Delete", "DirMeta"]},
    "Flavor": {"Gzip": None, "Zlib": None},
}


def check_path(p, where):
    if not isinstance(p, bytes) or not p:
        raise Refused("%s: empty or non-bytes path" % where)
    if p.startswith(b"/") or b"\0" in p or len(p) > LIM["max_path_len"]:
        raise Refused("%s: invalid path %r" % (where, p))
    comps = p.split(b"/")
    if len(comps) > LIM["max_path_depth"]:
        raise Refused("%s: path too deep" % where)
    for c in comps:
        if c in (b"", b".", b"..") or len(c) > 255:
            raise Refused("%s: invalid path component in %r" % (where, p))
    if comps[0] == b".ferry":
        raise Refused("%s: path under .ferry" % where)


def check_type(v, t, where):
    if isinstance(t, tuple):
        if t[0] == "uint":
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > t[1]:
                raise Refused("%s: expected unsigned int <= %d, got %r" % (where, t[1], v))
            return
        if t[0] == "i64":
            if not isinstance(v, int) or isinstance(v, bool) or not -2 ** 63 <= v < 2 ** 63:
                raise Refused("%s: expected i64" % where)
            return
        if t[0] == "opt":
            if v is not None:
                check_type(v, t[1], where)
            return
        if t[0] == "list":
            if not isinstance(v, list):
                raise Refused("%s: expected array" % where)
            for i, e in enumerate(v):
                check_type(e, t[1], "%s[%d]" % (where, i))
            return
    if t == "text":
        if not isinstance(v, str):
            raise Refused("%s: expected text" % where)
        return
    if t == "bytes":
        if not isinstance(v, bytes):
            raise Refused("%s: expected bytes" % where)
        return
    if t in ("b32", "b8"):
        if not isinstance(v, bytes) or len(v) != int(t[1:]):
            raise Refused("%s: expected bstr(%s)" % (where, t[1:]))
        return
    if t == "bool":
        if not isinstance(v, bool):
            raise Refused("%s: expected bool" % where)
        return
    if t == "path":
        check_path(v, where)
        return
    if t in S:
        if not isinstance(v, dict):
            raise Refused("%s: expected map (%s)" % (where, t))
        fields = S[t]
        names = [f[0] for f in fields]
        for k in v:
            if k not in names:
                raise Refused("%s: unknown field %r in %s" % (where, k, t))
        present = [f[0] for f in fields if f[0] in v]
        if list(v.keys()) != present:
            raise Refused("%s: fields of %s not in declaration order: %s" % (where, t, list(v.keys())))
        for f in fields:
            if f[0] not in v:
                if len(f) > 2 and f[2] == "absent":
                    continue
                raise Refused("%s: missing field %s.%s" % (where, t, f[0]))
            if len(f) > 2 and v[f[0]] is None:
                raise Refused("%s: %s.%s present as null (must be absent)" % (where, t, f[0]))
            check_type(v[f[0]], f[1], where + "." + f[0])
        return
    if t in E:
        variants = E[t]
        if isinstance(v, str):
            if v not in variants or variants[v] is not None:
                raise Refused("%s: bad unit variant %r of %s" % (where, v, t))
            return
        if isinstance(v, dict) and len(v) == 1:
            (k, inner), = v.items()
            if k not in variants or variants[k] is None:
                raise Refused("%s: bad variant %r of %s" % (where, k, t))
            check_type(inner, variants[k], where + "." + k)
            return
        raise Refused("%s: bad enum %s: %r" % (where, t, v))
    raise AssertionError(t)


def variant(v):
    if isinstance(v, str):
        return v, None
    (k, x), = v.items()
    return k, x


def decode_manifest(member):
    # §4.6 step 1: one zstd frame, bounded window, nothing after it
    try:
        fp = zstandard.get_frame_parameters(member)
    except zstandard.ZstdError as e:
        raise Refused("manifest member is not a zstd frame: %s" % e)
    if fp.window_size > 1 << LIM["max_window_log"]:
        raise Refused("manifest window too large")
    if fp.has_checksum:
        note("manifest zstd frame has a checksum")
    cs = fp.content_size
    if cs not in (zstandard.CONTENTSIZE_UNKNOWN,) and cs > LIM["max_manifest_decoded"]:
        raise Refused("manifest declares more than max_manifest_decoded")
    dobj = zstandard.ZstdDecompressor(max_window_size=1 << LIM["max_window_log"]).decompressobj()
    cb = dobj.decompress(member)
    if not dobj.eof:
        raise Refused("manifest zstd frame truncated")
    if dobj.unused_data:
        raise Refused("data after the manifest's zstd frame")
    if len(cb) > LIM["max_manifest_decoded"]:
        raise Refused("manifest over max_manifest_decoded")
    # step 2/3: strict CBOR decode (heads, tags, indefinite, trailing bytes, depth, strings)
    dec = cbor.Decoder(cb, max_depth=LIM["max_manifest_depth"], max_string=LIM["max_manifest_string"])
    try:
        m = dec.item()
        if dec.i != len(cb):
            raise Refused("bytes after the CBOR manifest")
    except cbor.CborError as e:
        raise Refused("manifest CBOR: %s" % e)
    if dec.items > LIM["max_manifest_items"]:
        raise Refused("too many CBOR items")
    check_type(m, "Manifest", "manifest")
    # step 4: canonical form
    if cbor.dumps(m) != cb:
        raise Refused("manifest is not canonical CBOR")
    return m, cb


# ---------------------------------------------------------------- structural rules (§4.5, §4.9)


def data_length(f):
    if "gzip" in f:
        return f["gzip"]["raw"]
    if "extents" in f:
        return sum(x["len"] for x in f["extents"])
    return f["size"]


def piece_key(p):
    return cbor.dumps(p["method"]) + b"|%d|%d" % (p["offset"], p["len"])


def check_structure(m):
    if m["format"] != 6:
        raise Refused("unsupported bundle format version %d" % m["format"])
    for k in ("entries", "old", "script"):
        if len(m[k]) > LIM["max_entries"]:
            raise Refused("too many %s" % k)
    if len(m["frames"]) > LIM["max_frames"]:
        raise Refused("too many frames")
    ch = m["channel"]
    if not 1 <= len(ch) <= LIM["max_channel_len"] or any(not 0x21 <= ord(c) <= 0x7e for c in ch):
        raise Refused("bad channel %r" % ch)
    for i, fr in enumerate(m["frames"]):
        if fr["size"] > LIM["max_frame_bytes"] or fr["decoded"] > LIM["max_frame_decoded"]:
            raise Refused("frame %d over the size limits" % i)
    for lst in ("entries", "old"):
        ps = [e["path"] for e in m[lst]]
        if any(a >= b for a, b in zip(ps, ps[1:])):
            raise Refused("%s not strictly sorted" % lst)
    ent = {e["path"]: e for e in m["entries"]}
    old = {e["path"]: e for e in m["old"]}
    for e in m["entries"] + m["old"]:
        if e["meta"]["mode"] > 0o7777:
            raise Refused("mode over 0o7777 at %r" % e["path"])
    for lst in ("entries", "old"):
        for e in m[lst]:
            k, x = variant(e["kind"])
            t = x["target"] if k == "Symlink" else b"x"
            if not 1 <= len(t) <= LIM["max_symlink_len"] or b"\0" in t:
                raise Refused("bad symlink target at %s %r" % (lst, e["path"]))
            if k == "Hardlink" and lst == "entries":
                pr = ent.get(x["primary"])
                if pr is None or variant(pr["kind"])[0] != "File" or not x["primary"] < e["path"]:
                    raise Refused("hardlink %r: primary is not an earlier File" % e["path"])
    # pieces
    frames = m["frames"]
    per_frame = {}
    npieces = 0
    nextents = 0
    for e in m["entries"]:
        k, f = variant(e["kind"])
        if k != "File":
            continue
        ck, cx = variant(f["content"])
        if ck == "Unchanged":
            if "hash" in f:
                raise Refused("Unchanged file %r has a hash" % e["path"])
        elif "hash" not in f:
            raise Refused("file %r lacks its hash" % e["path"])
        o = old.get(e["path"])
        if o is not None and variant(o["kind"])[0] in ("File", "Tagged") and False:
            pass
        if ck == "Unchanged" and o is not None:
            ok, ox = variant(o["kind"])
            if ok not in ("File", "Tagged") or ox["size"] != f["size"]:
                raise Refused("Unchanged file %r: old entry is not a file of the same size" % e["path"])
        if "extents" in f:
            ex = f["extents"]
            nextents += len(ex)
            if len(ex) > LIM["max_extents_per_file"]:
                raise Refused("too many extents")
            end = -1
            for x in ex:
                if x["len"] == 0 or x["offset"] <= end:
                    raise Refused("bad extents at %r" % e["path"])
                end = x["offset"] + x["len"]
            if end > f["size"] or data_length(f) >= f["size"]:
                raise Refused("bad extents at %r" % e["path"])
        if "gzip" in f:
            g = f["gzip"]
            if "extents" in f:
                raise Refused("file both sparse and re-created")
            if not (10 <= len(g["header"]) <= 1024 and g["header"][:3] == b"\x1f\x8b\x08"):
                raise Refused("bad gzip header at %r" % e["path"])
            if not 1 <= g["level"] <= 9 or not 1 <= g["raw"] <= LIM["max_regzip_raw"]:
                raise Refused("bad gzip level/raw at %r" % e["path"])
            if f["size"] < len(g["header"]) + 10:
                raise Refused("gzip size too small at %r" % e["path"])
            if ck != "Pieces" or len(cx) != 1 or variant(cx[0]["method"])[0] not in ("Zstd", "Lzma"):
                raise Refused("re-created gzip file %r must have exactly one Zstd/Lzma piece" % e["path"])
        dl = data_length(f)
        if ck == "Empty" and dl != 0:
            raise Refused("Empty file %r with data length %d" % (e["path"], dl))
        if ck == "Copy":
            src = old.get(cx["from"])
            if src is None or variant(src["kind"])[0] not in ("File", "Tagged") or variant(src["kind"])[1]["size"] != f["size"]:
                raise Refused("Copy source of %r is not an OLD file of the same size" % e["path"])
        if ck == "Pieces":
            if dl == 0:
                raise Refused("Pieces with data length 0 at %r" % e["path"])
            if sum(p["len"] for p in cx) != dl:
                raise Refused("pieces of %r do not sum to its data length" % e["path"])
            for p in cx:
                npieces += 1
                if p["frame"] >= len(frames):
                    raise Refused("piece names frame %d out of range" % p["frame"])
                fr = frames[p["frame"]]
                mk, mx = variant(p["method"])
                if p["len"] == 0:
                    raise Refused("piece of length 0")
                if mk in ("Bsdiff", "BsdiffLzma", "BsdiffSplit"):
                    if p["offset"] != 0 or p["len"] > LIM["max_frame_decoded"]:
                        raise Refused("bad bsdiff piece")
                    if mk == "BsdiffSplit":
                        if mx["control"] % 24 or mx["control"] + mx["copy"] > fr["decoded"] or \
                           mx["control_size"] < 1 or mx["copy_size"] < 1 or \
                           mx["control_size"] + mx["copy_size"] >= fr["size"]:
                            raise Refused("bsdiff streams do not fit frame %d" % p["frame"])
                elif p["offset"] + p["len"] > fr["decoded"]:
                    raise Refused("piece outside frame %d" % p["frame"])
                if mk in ("Patch", "Bsdiff", "BsdiffLzma", "BsdiffSplit"):
                    b = old.get(mx["base"])
                    if b is None or variant(b["kind"])[0] not in ("File", "Tagged") or \
                       mx["offset"] + mx["len"] > variant(b["kind"])[1]["size"]:
                        raise Refused("bad delta base %r" % mx["base"])
                if mk in ("Lzma", "BsdiffLzma", "BsdiffSplit"):
                    if not 12 <= mx["dict_log"] <= LIM["max_lzma_dict_log"]:
                        raise Refused("LZMA2 dictionary of frame %d over the limit" % p["frame"])
                per_frame.setdefault(p["frame"], {})[piece_key(p)] = p
    if npieces > LIM["max_pieces"] or nextents > LIM["max_extents"]:
        raise Refused("too many pieces/extents")
    for i, fr in enumerate(frames):
        ps = per_frame.get(i)
        if not ps:
            note("frame %d is used by no piece (the tiling rule then fails unless decoded is 0)" % i)
            raise Refused("frame %d not tiled" % i)
        meths = {cbor.dumps(p["method"]) for p in ps.values()}
        if len(meths) != 1:
            raise Refused("frame %d: pieces name different methods" % i)
        mk = variant(next(iter(ps.values()))["method"])[0]
        if mk in ("Patch", "Bsdiff", "BsdiffLzma", "BsdiffSplit"):
            if len(ps) != 1:
                raise Refused("patch frame %d with more than one distinct piece" % i)
            if mk != "Patch":
                continue
        pos = 0
        for p in sorted(ps.values(), key=lambda p: (p["offset"], p["len"])):
            if p["offset"] != pos:
                raise Refused("pieces of frame %d do not tile it (gap/overlap at %d)" % (i, pos))
            pos += p["len"]
        if pos != fr["decoded"]:
            raise Refused("pieces of frame %d do not reach its decoded size" % i)
    # tagged
    has_tagged = any(variant(o["kind"])[0] == "Tagged" for o in m["old"])
    if has_tagged != (m["tagged_digest"] is not None):
        raise Refused("tagged_digest set iff a Tagged entry exists: violated")
    for o in m["old"]:
        if variant(o["kind"])[0] == "Tagged":
            e = ent.get(o["path"])
            if e and variant(e["kind"])[0] == "File" and variant(e["kind"])[1]["config"]:
                raise Refused("Tagged old entry for config file %r" % o["path"])
    # hooks
    if len(m["hooks"]) > LIM["max_hooks"]:
        raise Refused("too many hooks")
    for h in m["hooks"]:
        if not 1 <= len(h["glob"].encode()) <= 256 or len(h["command"].encode()) > 4096 or \
           not h["command"].strip() or h["timeout_secs"] == 0:
            raise Refused("bad hook")
    if m["rotation"] is not None:
        r = m["rotation"]
        if len(r["add"]) > 64 or len(r["retire"]) > 64 or (r["threshold"] is not None and r["threshold"] < 1):
            raise Refused("bad rotation")
    check_xattrs(m)
    if m["sealed"] is not None:
        raise Refused("encrypted bundles are not supported by this reader")


def covers(prefix, name):
    return name == prefix or name.startswith(prefix + b".")


def check_xattrs(m):
    ns = [n.encode() for n in m["xattr_namespaces"]]
    if ns != sorted(set(ns)) or any(not all(0x21 <= c <= 0x7e for c in n) for n in ns):
        raise Refused("xattr_namespaces not sorted/unique/printable")
    for a in ns:
        for b in ns:
            if a != b and covers(a, b):
                raise Refused("xattr namespace %r covers %r" % (a, b))
    sets = m["xattr_sets"]
    seen = set()
    for s in sets:
        if not s:
            raise Refused("empty xattr set")
        names = [x["name"] for x in s]
        if names != sorted(set(names)):
            raise Refused("xattr set not sorted/unique")
        for x in s:
            n = x["name"]
            if not 1 <= len(n) <= 255 or b"\0" in n:
                raise Refused("bad xattr name")
            nsp, _, rest = n.partition(b".")
            if nsp not in (b"security", b"system", b"trusted", b"user") or not rest:
                raise Refused("bad xattr namespace %r" % n)
            if nsp == b"system" and n not in (b"system.posix_acl_access", b"system.posix_acl_default"):
                raise Refused("bad system xattr")
            if not any(covers(p, n) for p in ns):
                raise Refused("xattr %r not covered by a carried namespace" % n)
        key = cbor.dumps(s)
        if key in seen:
            raise Refused("duplicate xattr set")
        seen.add(key)
    order = []
    for e in m["entries"] + m["old"]:
        i = e["meta"]["xattrs"]
        if i is not None:
            if i >= len(sets):
                raise Refused("xattr index out of range")
            if i not in order:
                order.append(i)
    if order != list(range(len(sets))):
        raise Refused("xattr sets not in order of first reference: %s" % order)


# ---------------------------------------------------------------- script checks (§6, subset)


def parent(p):
    return p.rsplit(b"/", 1)[0] if b"/" in p else None


def check_script(m):
    ent = {e["path"]: e for e in m["entries"]}
    old = {e["path"]: e for e in m["old"]}
    phase_of = {"Mkdir": 0, "Place": 0, "SetMeta": 0, "Delete": 1, "DirMeta": 2}
    ph = 0
    first = {}
    dirmeta = set()
    created_at = {}
    for i, s in enumerate(m["script"]):
        op, p = s["op"], s["path"]
        if phase_of[op] < ph:
            raise Refused("[§6 rule 1] step %d %s %r out of phase" % (i, op, p))
        ph = phase_of[op]
        if op == "DirMeta":
            if p in dirmeta:
                raise Refused("[§6 rule 2] two DirMeta for %r" % p)
            dirmeta.add(p)
        elif op != "Delete" or True:
            if op in ("Mkdir", "Place", "SetMeta", "Delete"):
                if p in first:
                    raise Refused("[§6 rule 2] two steps on %r" % p)
                first[p] = i
        if op in ("Mkdir", "Place", "SetMeta", "DirMeta") and p not in ent:
            raise Refused("[§6 rule 9] step on %r without an entry" % p)
        if op == "Delete" and (p not in old or p in ent):
            raise Refused("Delete of %r: not in old or still in NEW" % p)
        if op == "Mkdir" and (variant(ent[p]["kind"])[0] != "Dir" or p in old):
            raise Refused("Mkdir precondition fails at %r" % p)
        if op == "DirMeta" and variant(ent[p]["kind"])[0] != "Dir":
            raise Refused("DirMeta on non-dir %r" % p)
        if op in ("Mkdir", "Place"):
            created_at[p] = i
            pp = parent(p)
            if pp in created_at and created_at[pp] > i:
                raise Refused("[§6 rule 3]")
        if op in ("Mkdir", "Place"):
            pp = parent(p)
            if pp is not None and pp not in created_at and pp in ent and \
               any(s2["path"] == pp and s2["op"] in ("Mkdir", "Place") for s2 in m["script"][i:]):
                raise Refused("[§6 rule 3] parent of %r created later" % p)
        if op == "Place":
            k, x = variant(ent[p]["kind"])
            if k == "Hardlink" and created_at.get(x["primary"], 1 << 60) > i:
                raise Refused("[§6 rule 5] hardlink %r before its primary" % p)
    # rule 8: every entry's parent is a NEW Dir entry
    for p, e in ent.items():
        pp = parent(p)
        if pp is not None and (pp not in ent or variant(ent[pp]["kind"])[0] != "Dir"):
            raise Refused("[§6 rule 8] parent of %r is not a listed Dir" % p)
    # rule 9 (partly)
    for p, e in ent.items():
        k, f = variant(e["kind"])
        if k == "File" and variant(f["content"])[0] != "Unchanged" and \
           not any(s["path"] == p and s["op"] == "Place" for s in m["script"]):
            raise Refused("[§6 rule 9] changed file %r not placed" % p)
    for p in old:
        if p not in ent:
            if not any(s["path"] == p and s["op"] == "Delete" for s in m["script"]):
                # removed with a replaced directory?
                anc = parent(p)
                ok = False
                while anc is not None:
                    if anc in ent and variant(ent[anc]["kind"])[0] != "Dir":
                        ok = True
                    anc = parent(anc)
                if not ok:
                    raise Refused("[§6 rule 9] old %r neither in NEW nor deleted" % p)
    check_required_entries(m)


def check_required_entries(m):
    """§4.2 rules 1-5 / §6 rule 10: the listed entries are exactly the required set."""
    ent = {e["path"]: e for e in m["entries"]}
    need = set()
    for s in m["script"]:
        if s["op"] in ("Mkdir", "Place", "SetMeta", "DirMeta"):
            need.add(s["path"])
    for o in m["old"]:
        if o["path"] in ent:
            need.add(o["path"])
    changed = True
    groups = {}
    for p, e in ent.items():
        k, x = variant(e["kind"])
        if k == "Hardlink":
            groups.setdefault(x["primary"], {x["primary"]}).add(p)
    member_of = {}
    for pr, g in groups.items():
        for q in g:
            member_of[q] = g
    while changed:
        changed = False
        new = set(need)
        for p in need:
            if p in member_of:
                new |= member_of[p]
            e = ent.get(p)
            if e is not None:
                k, x = variant(e["kind"])
                if k == "File" and x["config"]:
                    side = p + b".ferry-new"
                    if side in ent:
                        new.add(side)
            q = parent(p)
            while q is not None:
                new.add(q)
                q = parent(q)
        if new != need:
            need = new
            changed = True
    extra = set(ent) - need
    if extra:
        raise Refused("[§6 rule 10] entries listed for no reason: %s" % sorted(extra)[:5])


# ---------------------------------------------------------------- trees


def read_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(names, key=lambda s: s.encode()):
        out.append({"name": n.encode(), "value": os.getxattr(path, n, follow_symlinks=False)})
    return out


def walk(root):
    out = []
    for dp, dns, fns in os.walk(root):
        rel = os.path.relpath(dp, root)
        if rel == ".":
            dns[:] = [d for d in dns if d != ".ferry"]
            fns[:] = [f for f in fns if f != ".ferry"]
        for n in dns + fns:
            full = os.path.join(dp, n)
            r = os.path.relpath(full, root).encode()
            out.append(r)
    return sorted(out)


def file_hash(path):
    h = blake3.blake3()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.digest()


def scan_old_entry(root, p):
    full = os.path.join(root, p.decode("surrogateescape") if False else os.fsdecode(p))
    st = os.lstat(full)
    meta = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns, "xattrs": None}
    m = st.st_mode
    if stat.S_ISREG(m):
        kind = {"File": {"size": st.st_size, "hash": file_hash(full)}}
    elif stat.S_ISDIR(m):
        kind = "Dir"
    elif stat.S_ISLNK(m):
        kind = {"Symlink": {"target": os.fsencode(os.readlink(full))}}
    elif stat.S_ISFIFO(m):
        kind = "Fifo"
    elif stat.S_ISCHR(m):
        kind = {"CharDev": {"rdev": st.st_rdev}}
    elif stat.S_ISBLK(m):
        kind = {"BlockDev": {"rdev": st.st_rdev}}
    else:
        raise Refused("unsupported file type at %r" % p)
    return {"path": p, "meta": meta, "kind": kind}, read_xattrs(full)


def tree_digest(root):
    h = blake3.blake3(derive_key_context="ferry tree v1")
    for p in walk(root):
        e, xa = scan_old_entry(root, p)
        h.update(cbor.dumps(e))
        if xa:
            h.update(cbor.dumps(xa))
    return h.digest()


def in_scope(m, name):
    return any(covers(n.encode(), name) for n in m["xattr_namespaces"])


def base_check(m, root):
    drift = []
    records = []
    sets = m["xattr_sets"]
    for o in m["old"]:
        p = o["path"]
        full = os.path.join(root, os.fsdecode(p))
        # resolve without following symlinks in ancestors
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            drift.append((p, "missing"))
            continue
        k, x = variant(o["kind"])
        mo = st.st_mode
        if k in ("File", "Tagged"):
            if not stat.S_ISREG(mo):
                drift.append((p, "type"))
                continue
            if st.st_size != x["size"]:
                drift.append((p, "size"))
                continue
            h = file_hash(full)
            if k == "File" and h != x["hash"]:
                drift.append((p, "content"))
            if k == "Tagged":
                if h[:8] != x["tag"]:
                    drift.append((p, "content differs from the bundle's base"))
                records.append(len(p).to_bytes(8, "little") + p + x["size"].to_bytes(8, "little") + h)
        elif k == "Dir":
            if not stat.S_ISDIR(mo):
                drift.append((p, "type"))
        elif k == "Symlink":
            if not stat.S_ISLNK(mo) or os.fsencode(os.readlink(full)) != x["target"]:
                drift.append((p, "symlink"))
        elif k == "Fifo":
            if not stat.S_ISFIFO(mo):
                drift.append((p, "type"))
        elif k in ("CharDev", "BlockDev"):
            if not (stat.S_ISCHR(mo) if k == "CharDev" else stat.S_ISBLK(mo)) or st.st_rdev != x["rdev"]:
                drift.append((p, "device"))
        want = sets[o["meta"]["xattrs"]] if o["meta"]["xattrs"] is not None else []
        have = [a for a in read_xattrs(full) if in_scope(m, a["name"])]
        want = [a for a in want if in_scope(m, a["name"])]
        if have != want:
            drift.append((p, "xattrs"))
    if m["tagged_digest"] is not None and not drift:
        td = derive_key("ferry tagged files v1", b"".join(records))
        if td != m["tagged_digest"]:
            drift.append((None, "the files listed by tag do not match the bundle's aggregate digest"))
    # paths the script creates and OLD lacks must be absent
    oldp = {o["path"] for o in m["old"]}
    for s in m["script"]:
        if s["op"] in ("Mkdir", "Place") and s["path"] not in oldp:
            if os.path.lexists(os.path.join(root, os.fsdecode(s["path"]))):
                drift.append((s["path"], "exists but OLD lacks it"))
    return drift


# ---------------------------------------------------------------- frame decoders (§5)

BCJ = {"None": None, "X86": lzma.FILTER_X86, "PowerPc": lzma.FILTER_POWERPC, "Ia64": lzma.FILTER_IA64,
       "Arm": lzma.FILTER_ARM, "ArmThumb": lzma.FILTER_ARMTHUMB, "Sparc": lzma.FILTER_SPARC,
       "Arm64": 0x0A, "RiscV": 0x0B}


def zstd_decode(data, decoded, prefix=None):
    fp = zstandard.get_frame_parameters(data)
    if fp.window_size > 1 << LIM["max_window_log"]:
        raise Refused("zstd window over the limit")
    if prefix is not None:
        dct = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        dctx = zstandard.ZstdDecompressor(dict_data=dct, max_window_size=1 << LIM["max_window_log"])
    else:
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << LIM["max_window_log"])
    dobj = dctx.decompressobj()
    out = dobj.decompress(data)
    if not dobj.eof:
        raise Refused("zstd frame truncated")
    if dobj.unused_data:
        raise Refused("data after the zstd frame")
    if len(out) != decoded:
        raise Refused("zstd frame decodes to %d bytes, declared %d" % (len(out), decoded))
    return out


def lzma2_decode(data, decoded, filt, dict_log):
    dsz = min(1 << dict_log, max(decoded, 4096))
    filters = []
    if BCJ[filt] is not None:
        filters.append({"id": BCJ[filt]})
    filters.append({"id": lzma.FILTER_LZMA2, "dict_size": dsz})
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters)
    out = d.decompress(data, max_length=decoded + 1)
    if len(out) > decoded:
        raise Refused("LZMA2 frame decodes to more than declared")
    if not d.eof:
        raise Refused("LZMA2 stream ends before its end marker (or decodes to more)")
    if d.unused_data:
        raise Refused("data after the end of the LZMA2 stream")
    if len(out) != decoded:
        raise Refused("LZMA2 frame decodes to %d bytes, declared %d" % (len(out), decoded))
    if data[-1] != 0:
        raise Refused("LZMA2 stream's last byte is not the end marker")
    return out


def smag(b):
    v = int.from_bytes(b, "little")
    return -(v & ((1 << 63) - 1)) if v >> 63 else v


def bspatch_records(records, base, want_len):
    """records: iterable of (add_diff_bytes_getter, copy_bytes_getter, seek)"""
    out = bytearray()
    pos = 0
    for add, diff, copy, seek in records:
        if len(out) + add + len(copy) > want_len:
            raise Refused("bsdiff patch writes past the piece's len")
        if pos + add > len(base) or pos < 0:
            raise Refused("bsdiff patch reads outside the base window")
        bb = base[pos:pos + add]
        out += bytes((x + y) & 255 for x, y in zip(diff, bb))
        out += copy
        pos += add + seek
        if pos < 0:
            raise Refused("bsdiff seeks before position 0")
    if len(out) != want_len:
        raise Refused("bsdiff patch produced %d bytes, want %d" % (len(out), want_len))
    return bytes(out)


def bsdiff_interleaved(patch, base, want_len):
    recs = []
    i = 0
    while i < len(patch):
        if i + 24 > len(patch):
            raise Refused("bsdiff patch ends inside a record")
        add = int.from_bytes(patch[i:i + 8], "little")
        cp = int.from_bytes(patch[i + 8:i + 16], "little")
        seek = smag(patch[i + 16:i + 24])
        i += 24
        if i + add + cp > len(patch):
            raise Refused("bsdiff patch ends inside a record")
        diff = patch[i:i + add]
        i += add
        copy = patch[i:i + cp]
        i += cp
        recs.append((add, diff, copy, seek))
    return bspatch_records(recs, base, want_len)


def bsdiff_split(frame, decoded, mx, base, want_len):
    cs, ps = mx["control_size"], mx["copy_size"]
    ctrl = lzma2_decode(frame[:cs], mx["control"], "None", mx["dict_log"])
    lit = lzma2_decode(frame[cs:cs + ps], mx["copy"], "None", mx["dict_log"])
    diffs = lzma2_decode(frame[cs + ps:], decoded - mx["control"] - mx["copy"], "None", mx["dict_log"])
    recs = []
    li = di = 0
    for r in range(0, len(ctrl), 24):
        add = int.from_bytes(ctrl[r:r + 8], "little")
        cp = int.from_bytes(ctrl[r + 8:r + 16], "little")
        seek = smag(ctrl[r + 16:r + 24])
        if di + add > len(diffs) or li + cp > len(lit):
            raise Refused("split bsdiff: streams too short")
        recs.append((add, diffs[di:di + add], lit[li:li + cp], seek))
        di += add
        li += cp
    if di != len(diffs) or li != len(lit):
        raise Refused("split bsdiff: literals or differences left over")
    return bspatch_records(recs, base, want_len)


# ---------------------------------------------------------------- regzip (§5.3)


def regzip(g, raw):
    if g["flavor"] == "Gzip":
        r = subprocess.run(["gzip", "-c", "-n", "-%d" % g["level"]], input=raw, capture_output=True, check=True)
        deflate = r.stdout[10:-8]
    else:
        c = zlib.compressobj(g["level"], zlib.DEFLATED, -15, 8, 0)
        deflate = c.compress(raw) + c.flush()
    return g["header"] + deflate + zlib.crc32(raw).to_bytes(4, "little") + (len(raw) & 0xffffffff).to_bytes(4, "little")


# ---------------------------------------------------------------- applying


def apply_meta(m, path, meta, kind, set_mode=True):
    full = path
    islink = os.path.islink(full)
    os.chown(full, meta["uid"], meta["gid"], follow_symlinks=False)
    if not islink:
        os.chmod(full, meta["mode"])
    # xattrs in scope
    want = m["xattr_sets"][meta["xattrs"]] if meta["xattrs"] is not None else []
    want = {a["name"]: a["value"] for a in want}
    have = {a["name"]: a["value"] for a in read_xattrs(full) if in_scope(m, a["name"])}
    for n, v in want.items():
        if have.get(n) != v:
            os.setxattr(full, n, v, follow_symlinks=False)
    for n in have:
        if n not in want:
            os.removexattr(full, n, follow_symlinks=False)
    os.utime(full, ns=(meta["mtime_ns"], meta["mtime_ns"]), follow_symlinks=False)


def rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def stage_and_apply(m, data, frame_off, target, stagedir):
    frames = m["frames"]
    ent = {e["path"]: e for e in m["entries"]}
    idx = {e["path"]: i for i, e in enumerate(m["entries"])}
    # step 7: hash every frame
    for i, fr in enumerate(frames):
        b = data[frame_off[i]:frame_off[i] + fr["size"]]
        if b3(b) != fr["hash"]:
            raise Refused("frame %d does not match its hash in the manifest" % i)

    def frame_bytes(i):
        return data[frame_off[i]:frame_off[i] + frames[i]["size"]]

    def old_window(mx):
        with open(os.path.join(target, os.fsdecode(mx["base"])), "rb") as f:
            f.seek(mx["offset"])
            b = f.read(mx["len"])
        if len(b) != mx["len"]:
            raise Refused("base window short")
        return b

    decoded_cache = {}
    methods_seen = {}

    def piece_data(p):
        i = p["frame"]
        mk, mx = variant(p["method"])
        mkey = mk + ("" if mk != "Lzma" else ":" + mx["filter"]); methods_seen[mkey] = methods_seen.get(mkey, 0) + 1
        fb = frame_bytes(i)
        dec = frames[i]["decoded"]
        if mk == "Zstd":
            if i not in decoded_cache:
                decoded_cache[i] = zstd_decode(fb, dec)
            return decoded_cache[i][p["offset"]:p["offset"] + p["len"]]
        if mk == "Lzma":
            if i not in decoded_cache:
                decoded_cache[i] = lzma2_decode(fb, dec, mx["filter"], mx["dict_log"])
            return decoded_cache[i][p["offset"]:p["offset"] + p["len"]]
        if mk == "Patch":
            out = zstd_decode(fb, dec, prefix=old_window(mx))
            return out[p["offset"]:p["offset"] + p["len"]]
        if mk == "Bsdiff":
            return bsdiff_interleaved(zstd_decode(fb, dec), old_window(mx), p["len"])
        if mk == "BsdiffLzma":
            return bsdiff_interleaved(lzma2_decode(fb, dec, "None", mx["dict_log"]), old_window(mx), p["len"])
        if mk == "BsdiffSplit":
            return bsdiff_split(fb, dec, mx, old_window(mx), p["len"])
        raise AssertionError(mk)

    # stage files (reads from the live OLD tree only)
    staged = {}
    for s in m["script"]:
        if s["op"] not in ("Place",):
            continue
        p = s["path"]
        e = ent[p]
        k, f = variant(e["kind"])
        if k != "File":
            continue
        ck, cx = variant(f["content"])
        sp = os.path.join(stagedir, "e%d" % idx[p])
        if ck == "Pieces":
            stream = b"".join(piece_data(pc) for pc in cx)
            if "gzip" in f:
                if len(stream) != f["gzip"]["raw"]:
                    raise Refused("regzip raw length mismatch")
                content = regzip(f["gzip"], stream)
                if len(content) != f["size"]:
                    raise Refused("re-created gzip file %r has %d bytes, want %d" % (p, len(content), f["size"]))
            else:
                content = stream
        elif ck == "Copy":
            content = open(os.path.join(target, os.fsdecode(cx["from"])), "rb").read()
            if "extents" in f:
                content = b"".join(content[x["offset"]:x["offset"] + x["len"]] for x in f["extents"])
        elif ck == "Empty":
            content = b""
        else:
            raise Refused("Place of Unchanged file %r" % p)
        with open(sp, "wb") as out:
            if "extents" in f:
                out.truncate(f["size"])
                d = 0
                for x in f["extents"]:
                    out.seek(x["offset"])
                    out.write(content[d:d + x["len"]])
                    d += x["len"]
                if d != len(content):
                    raise Refused("sparse data stream length mismatch at %r" % p)
            else:
                out.write(content)
        if os.path.getsize(sp) != f["size"]:
            raise Refused("staged %r has size %d, want %d" % (p, os.path.getsize(sp), f["size"]))
        if file_hash(sp) != f["hash"]:
            raise Refused("staged file %r does not match its hash" % p)
        staged[p] = sp
    print("  methods decoded:", dict(sorted(methods_seen.items())))
    # commit
    T = lambda p: os.path.join(target, os.fsdecode(p))
    for s in m["script"]:
        op, p = s["op"], s["path"]
        e = ent.get(p)
        if op == "Mkdir":
            os.mkdir(T(p))
            apply_meta(m, T(p), e["meta"], "Dir")
        elif op == "Place":
            k, x = variant(e["kind"])
            if os.path.lexists(T(p)):
                rm(T(p))
            if k == "File":
                os.rename(staged[p], T(p))
                apply_meta(m, T(p), e["meta"], k)
            elif k == "Symlink":
                os.symlink(os.fsdecode(x["target"]), T(p))
                apply_meta(m, T(p), e["meta"], k)
            elif k == "Hardlink":
                os.link(T(x["primary"]), T(p))
            elif k == "Fifo":
                os.mkfifo(T(p))
                apply_meta(m, T(p), e["meta"], k)
            elif k in ("CharDev", "BlockDev"):
                os.mknod(T(p), (stat.S_IFCHR if k == "CharDev" else stat.S_IFBLK) | 0o600, x["rdev"])
                apply_meta(m, T(p), e["meta"], k)
            elif k == "Dir":
                os.mkdir(T(p))
                apply_meta(m, T(p), e["meta"], k)
        elif op == "SetMeta":
            apply_meta(m, T(p), e["meta"], variant(e["kind"])[0])
        elif op == "Delete":
            rm(T(p))
        elif op == "DirMeta":
            apply_meta(m, T(p), e["meta"], "Dir")
    # hardlink meta: the inode gets the primary's (already applied on primary placement)


# ---------------------------------------------------------------- comparison


def describe(root, p):
    full = os.path.join(root, os.fsdecode(p))
    st = os.lstat(full)
    d = {"type": stat.S_IFMT(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns,
         "xattrs": read_xattrs(full)}
    if not stat.S_ISLNK(st.st_mode):
        d["mode"] = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        d["size"] = st.st_size
        d["hash"] = file_hash(full).hex()
    if stat.S_ISLNK(st.st_mode):
        d["target"] = os.readlink(full)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        d["rdev"] = st.st_rdev
    return d, (st.st_dev, st.st_ino), st


def compare(got, want):
    diffs = []
    pg, pw = walk(got), walk(want)
    if pg != pw:
        diffs.append("path sets differ: only in result %s; only in expected %s" %
                     (sorted(set(pg) - set(pw))[:10], sorted(set(pw) - set(pg))[:10]))
    ig, iw = {}, {}
    sparse_notes = []
    for p in sorted(set(pg) & set(pw)):
        a, ia, sa = describe(got, p)
        b, ib, sb = describe(want, p)
        if a != b:
            diffs.append("%s: %s" % (p.decode(errors="replace"),
                                     {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}))
        if stat.S_ISREG(sa.st_mode):
            ig.setdefault(ia, set()).add(p)
            iw.setdefault(ib, set()).add(p)
            if sa.st_blocks * 512 < sa.st_size // 2 or sb.st_blocks * 512 < sb.st_size // 2:
                sparse_notes.append("%s: allocated %d vs %d bytes (size %d)" % (p.decode(), sa.st_blocks * 512,
                                                                              sb.st_blocks * 512, sa.st_size))
    gg = {frozenset(g) for g in ig.values() if len(g) > 1}
    gw = {frozenset(g) for g in iw.values() if len(g) > 1}
    if gg != gw:
        diffs.append("hardlink groups differ: %s vs %s" % (gg, gw))
    return diffs, sparse_notes, gg


# ---------------------------------------------------------------- main


def read_bundle(path, trust):
    data = open(path, "rb").read()
    pos = 0
    M, mstart, pos = read_member(data, 0, b"ferry-v6/manifest.cbor")
    if M > LIM["max_manifest_bytes"]:
        raise Refused("manifest member over max_manifest_bytes")
    member = data[mstart:mstart + M]
    Ssz, sstart, pos = read_member(data, pos, b"ferry-v6/signatures.cbor")
    if Ssz > 4096:
        raise Refused("signature member over 4096 bytes")
    sigm = data[sstart:sstart + Ssz]
    bundle_id = b3(member)
    msg = PREFIX + bundle_id
    assert len(msg) == 51
    try:
        sigs = cbor.loads(sigm)
    except cbor.CborError as e:
        raise Refused("signature member: %s" % e)
    if not isinstance(sigs, list) or len(sigs) > LIM["max_signatures"]:
        raise Refused("signature member is not an array of at most 16 pairs")
    keys = []
    for pr in sigs:
        if not (isinstance(pr, list) and len(pr) == 2 and isinstance(pr[0], bytes) and len(pr[0]) == 32
                and isinstance(pr[1], bytes) and len(pr[1]) == 64):
            raise Refused("signature member: bad pair")
        keys.append(pr[0])
    if cbor.dumps(sigs) != sigm:
        raise Refused("signature member not canonical")
    for a, b in zip(keys, keys[1:]):
        if a == b:
            raise Refused("key %s signs twice" % key_id(a))
        if a > b:
            raise Refused("signatures are not sorted by public key")
    signers = []
    for pk, sg in sigs:
        ok, why = verify_strict(pk, sg, msg)
        if not ok:
            raise Refused("signature by key %s does not verify (%s)" % (key_id(pk), why))
        signers.append(pk)
    trusted = [pk for pk in signers if pk == trust]
    print("  bundle id %s; %d signature(s) verified; trusted: %d" % (bundle_id.hex(), len(signers), len(trusted)))
    if not trusted:
        raise Refused("bundle has 0 trusted signatures, the policy needs 1")
    m, cb = decode_manifest(member)
    check_structure(m)
    check_script(m)
    # payload members (§2.2)
    frame_off = layout_payload(data, pos, m)
    return data, m, cb, member, sigs, bundle_id, frame_off


def layout_payload(data, pos, m, on_truncated=None):
    """The payload members from `pos` (§2.2) and the end marker: the offset of every frame.
    `on_truncated(error)` may turn a truncated member into a better error."""
    frame_off = {}
    for k, (first, end, size) in enumerate(pack_frames(m["frames"])):
        try:
            psz, pst, pos = read_member(data, pos, b"ferry-v6/payload.%08d" % k)
        except Refused as e:
            if on_truncated and "truncated" in str(e):
                on_truncated(e)
            raise
        if psz != size:
            raise Refused("payload member %d size %d differs from the manifest's %d" % (k, psz, size))
        off = pst
        for i in range(first, end):
            frame_off[i] = off
            off += m["frames"][i]["size"]
    if len(data) < pos + 1024 or data[pos:pos + 1024] != bytes(1024):
        raise Refused("missing/bad end marker")
    if len(data) != pos + 1024:
        raise Refused("data after the end marker")
    return frame_off


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trust", required=True)
    ap.add_argument("--old")
    ap.add_argument("--out")
    ap.add_argument("--expect")
    ap.add_argument("bundle")
    a = ap.parse_args()
    trust = load_pub(a.trust)
    print("== %s" % a.bundle)
    data, m, cb, member, sigs, bid, frame_off = read_bundle(a.bundle, trust)
    print("  manifest: version %d base %s channel %s, %d entries, %d old, %d frames, %d steps, %d hooks, "
          "expires %s" % (m["version"], None if m["base"] is None else m["base"]["version"], m["channel"],
                          len(m["entries"]), len(m["old"]), len(m["frames"]), len(m["script"]), len(m["hooks"]),
                          m["expires"]))
    if not a.out:
        return 0
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    if m["base"] is not None:
        if not a.old:
            raise Refused("delta bundle needs --old")
        td = tree_digest(a.old)
        print("  tree_digest(OLD) %s %s" % (td.hex(), "== base.tree" if td == m["base"]["tree"] else
                                             "!= base.tree %s" % m["base"]["tree"].hex()))
    return apply_tree(m, data, frame_off, a.out, a.old, a.expect)


def pack_frames(frames):
    """Payload members (§2.2): [first frame, end frame, bytes] of each, frames packed in order
    while a member stays within PACK_BYTES."""
    packs = []
    for i, fr in enumerate(frames):
        if packs and packs[-1][2] + fr["size"] <= PACK_BYTES:
            packs[-1][1] = i + 1
            packs[-1][2] += fr["size"]
        else:
            packs.append([i, i + 1, fr["size"]])
    return packs


def apply_tree(m, data, frame_off, out, old, expect):
    """Copy OLD to `out` (or make it empty for a full bundle), check the base, stage, apply, and
    compare with `expect` if given. Returns the exit status."""
    if m["base"] is not None:
        subprocess.run(["cp", "-a", "--sparse=always", old, out], check=True)
    else:
        os.mkdir(out)
    drift = base_check(m, out)
    if drift:
        raise Refused("drifted paths: %s" % drift[:10])
    print("  base check passed (%d old entries)" % len(m["old"]))
    stagedir = out.rstrip("/") + ".stage"
    if os.path.exists(stagedir):
        shutil.rmtree(stagedir)
    os.mkdir(stagedir)
    stage_and_apply(m, data, frame_off, out, stagedir)
    shutil.rmtree(stagedir)
    if expect:
        diffs, sparse, groups = compare(out, expect)
        print("  hardlink groups:", sorted(sorted(x.decode() for x in g) for g in groups))
        for s in sparse:
            print("  sparse:", s)
        if diffs:
            print("  RESULT: %d difference(s) from %s" % (len(diffs), expect))
            for d in diffs[:30]:
                print("    " + d)
            return 1
        print("  RESULT: identical to %s" % expect)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Refused as e:
        print("  REFUSED: %s" % e)
        sys.exit(2)
