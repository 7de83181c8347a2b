"""Strict CBOR decoder/encoder following bundle-format.md §4.7 (ciborium-canonical)."""


class CborError(Exception):
    pass


class Decoder:
    def __init__(self, data, max_depth=16, max_string=64 * 1024, big_keys=("manifest",)):
        self.d = data
        self.i = 0
        self.max_depth = max_depth
        self.max_string = max_string
        self.big_keys = big_keys
        self.items = 0

    def head(self):
        if self.i >= len(self.d):
            raise CborError("truncated CBOR at %d" % self.i)
        b = self.d[self.i]
        self.i += 1
        mt, ai = b >> 5, b & 31
        if ai < 24:
            return mt, ai, b
        if ai in (24, 25, 26, 27):
            n = 1 << (ai - 24)
            if self.i + n > len(self.d):
                raise CborError("truncated head")
            v = int.from_bytes(self.d[self.i:self.i + n], "big")
            self.i += n
            # shortest form
            lo = {24: 24, 25: 256, 26: 65536, 27: 1 << 32}[ai]
            if v < lo:
                raise CborError("non-shortest head at %d" % (self.i - n - 1))
            return mt, v, b
        raise CborError("indefinite length / reserved head 0x%02x at %d" % (b, self.i - 1))

    def item(self, depth=1, key=None):
        if depth > self.max_depth:
            raise CborError("nested deeper than %d" % self.max_depth)
        self.items += 1
        start = self.i
        mt, v, b = self.head()
        if mt == 0:
            return v
        if mt == 1:
            return -1 - v
        if mt in (2, 3):
            lim = self.max_string if key not in self.big_keys else (1 << 28) + 16
            if v > lim:
                raise CborError("string of %d bytes over the limit" % v)
            if self.i + v > len(self.d):
                raise CborError("string longer than the document")
            s = bytes(self.d[self.i:self.i + v])
            self.i += v
            if mt == 3:
                try:
                    return s.decode("utf-8")
                except UnicodeDecodeError:
                    raise CborError("invalid UTF-8 text")
            return s
        if mt == 4:
            if v > len(self.d) - self.i:
                raise CborError("array header claims more elements than fit")
            return [self.item(depth + 1) for _ in range(v)]
        if mt == 5:
            if 2 * v > len(self.d) - self.i:
                raise CborError("map header claims more elements than fit")
            m = {}
            for _ in range(v):
                k = self.item(depth + 1)
                if not isinstance(k, str):
                    raise CborError("non-text map key")
                if k in m:
                    raise CborError("duplicate map key %r" % k)
                m[k] = self.item(depth + 1, key=k)
            return m
        if mt == 6:
            raise CborError("CBOR tag at %d" % start)
        # mt == 7
        if b == 0xf4:
            return False
        if b == 0xf5:
            return True
        if b == 0xf6:
            return None
        raise CborError("unsupported simple/float 0x%02x at %d" % (b, start))


def loads(data, **kw):
    dec = Decoder(data, **kw)
    v = dec.item()
    if dec.i != len(data):
        raise CborError("%d bytes after the CBOR document" % (len(data) - dec.i))
    return v


def _head(mt, v):
    if v < 24:
        return bytes([(mt << 5) | v])
    if v < 256:
        return bytes([(mt << 5) | 24, v])
    if v < 65536:
        return bytes([(mt << 5) | 25]) + v.to_bytes(2, "big")
    if v < 1 << 32:
        return bytes([(mt << 5) | 26]) + v.to_bytes(4, "big")
    return bytes([(mt << 5) | 27]) + v.to_bytes(8, "big")


def dumps(x):
    out = []

    def enc(x):
        if x is None:
            out.append(b"\xf6")
        elif x is True:
            out.append(b"\xf5")
        elif x is False:
            out.append(b"\xf4")
        elif isinstance(x, int):
            out.append(_head(0, x) if x >= 0 else _head(1, -1 - x))
        elif isinstance(x, (bytes, bytearray)):
            out.append(_head(2, len(x)))
            out.append(bytes(x))
        elif isinstance(x, str):
            b = x.encode()
            out.append(_head(3, len(b)))
            out.append(b)
        elif isinstance(x, list):
            out.append(_head(4, len(x)))
            for e in x:
                enc(e)
        elif isinstance(x, dict):
            out.append(_head(5, len(x)))
            for k, v in x.items():
                enc(k)
                enc(v)
        else:
            raise TypeError(type(x))

    enc(x)
    return b"".join(out)
