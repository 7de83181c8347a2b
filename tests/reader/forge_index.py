"""Build tampered/crafted channel indexes, signed with test keys, for update tests (§18.2)."""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import ferrycbor as cbor
import reader2 as R2
from reader import b3

def seckey(path):
    f = open(path).read().split()
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(f[2]))

def pub(sk):
    return sk.public_key().public_bytes_raw()

def sigmember(msg, keys):
    pairs = sorted([[pub(k), k.sign(msg)] for k in keys], key=lambda p: p[0])
    return cbor.dumps(pairs)

def build(rel, fresh, rkeys, fkeys):
    rb = cbor.dumps(rel); fresh = dict(fresh)
    if fresh.get("release") is None:
        fresh["release"] = b3(rb)
    fb = cbor.dumps(fresh)
    return cbor.dumps([rb, sigmember(b"ferry-v4 index release\0" + b3(rb), rkeys),
                       fb, sigmember(b"ferry-v4 index fresh\0" + b3(fb), fkeys)])

def load(path):
    return R2.decode_index(open(path, "rb").read())
