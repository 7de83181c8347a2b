"""Re-seal / tamper encrypted bundles (signed with test key A) to test §4.10's checks."""
import sys, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
import ferrycbor as cbor, reader as R, reader2 as R2
from forge_index import seckey, pub

def write_bundle(path, outer_cbor, sk, rest):
    member = zstandard.ZstdCompressor(level=19).compress(outer_cbor)
    bid = R.b3(member)
    sig = cbor.dumps([[pub(sk), sk.sign(R2.PREFIX + bid)]])
    out = bytearray()
    for name, body in ((b"ferry-v6/manifest.cbor", member), (b"ferry-v6/signatures.cbor", sig)):
        out += R.canonical_header(name, len(body)) + body + bytes(-len(body) % 512)
    out += rest
    open(path, "wb").write(out)

def main():
    src, ident = sys.argv[1], sys.argv[2]
    d = open(src, "rb").read()
    member, bid, sigs, signers, pos, _, _ = R2.read_head(d)
    rest = d[pos:]
    outer, ocb = R.decode_manifest(member)
    K, inner, inner_member = R2.open_sealed(outer, [R2.load_identity(ident)])
    A = seckey("A.secret")
    # 0: re-signed unchanged (must verify and apply)
    write_bundle("cr-same.ferry", cbor.dumps(outer), A, rest)
    # 1: wrong commitment
    o = dict(outer, sealed=dict(outer["sealed"], commitment=bytes(32)))
    write_bundle("cr-commit.ferry", cbor.dumps(o), A, rest)
    # 2: inner disagrees with outer (created + 1), correctly encrypted under K
    ic, _ = inner, None
    inner2 = dict(inner, created=inner["created"] + 1)
    im2 = zstandard.ZstdCompressor(level=19).compress(cbor.dumps(inner2))
    ct = ChaCha20Poly1305(K).encrypt(b"\xff" * 12, im2, b"")
    o = dict(outer, sealed=dict(outer["sealed"], manifest=ct))
    write_bundle("cr-disagree.ferry", cbor.dumps(o), A, rest)
    # 3: inner manifest ciphertext flipped (AEAD tag fails)
    bad = bytearray(outer["sealed"]["manifest"]); bad[5] ^= 1
    o = dict(outer, sealed=dict(outer["sealed"], manifest=bytes(bad)))
    write_bundle("cr-aead.ferry", cbor.dumps(o), A, rest)
    # 4: wrapped key of every stanza damaged: no identity opens it
    o = dict(outer, sealed=dict(outer["sealed"], recipients=[dict(s, wrapped=bytes(48)) for s in outer["sealed"]["recipients"]]))
    write_bundle("cr-wrapped.ferry", cbor.dumps(o), A, rest)
    # 5: nested: inner has sealed set (copy of outer's sealed)
    inner3 = dict(inner, sealed=outer["sealed"])
    im3 = zstandard.ZstdCompressor(level=19).compress(cbor.dumps(inner3))
    o = dict(outer, sealed=dict(outer["sealed"], manifest=ChaCha20Poly1305(K).encrypt(b"\xff" * 12, im3, b"")))
    write_bundle("cr-nested.ferry", cbor.dumps(o), A, rest)
    # 6: outer holds an entry (outer rules)
    o = dict(outer, hooks=[{"glob": "x", "command": "true", "timeout_secs": 5}])
    write_bundle("cr-outerhook.ferry", cbor.dumps(o), A, rest)

main()
