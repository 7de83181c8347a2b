"""ed25519 verification with the rules of bundle-format.md §3.3 (verify_strict semantics)."""
import hashlib

p = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
d = (-121665 * pow(121666, p - 2, p)) % p
SQRT_M1 = pow(2, (p - 1) // 4, p)


def inv(x):
    return pow(x, p - 2, p)


# extended coordinates (X, Y, Z, T)
def add(P, Q):
    X1, Y1, Z1, T1 = P
    X2, Y2, Z2, T2 = Q
    A = (Y1 - X1) * (Y2 - X2) % p
    B = (Y1 + X1) * (Y2 + X2) % p
    C = 2 * T1 * T2 * d % p
    D = 2 * Z1 * Z2 % p
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F % p, G * H % p, F * G % p, E * H % p)


def mul(s, P):
    Q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            Q = add(Q, P)
        P = add(P, P)
        s >>= 1
    return Q


def encode(P):
    X, Y, Z, _ = P
    zi = inv(Z)
    x, y = X * zi % p, Y * zi % p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def decode(b):
    """RFC 8032 5.1.3 decoding, lenient like curve25519-dalek: y is not required < p,
    and x = 0 with sign bit 1 is accepted."""
    if len(b) != 32:
        return None
    v = int.from_bytes(b, "little")
    sign = v >> 255
    y = (v & ((1 << 255) - 1)) % p
    u = (y * y - 1) % p
    w = (d * y * y + 1) % p
    x2 = u * inv(w) % p
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p != 0:
        x = x * SQRT_M1 % p
    if (x * x - x2) % p != 0:
        return None
    if (x & 1) != sign:
        x = (-x) % p
    return (x, y, 1, x * y % p)


def is_identity(P):
    X, Y, Z, _ = P
    return X % p == 0 and (Y - Z) % p == 0


def small_order(P):
    return is_identity(mul(8, P))


By = 4 * inv(5) % p
Bx = None


def _base():
    P = decode(By.to_bytes(32, "little"))
    return P


B = _base()


def verify_strict(A_bytes, sig, msg):
    if len(sig) != 64 or len(A_bytes) != 32:
        return False, "bad lengths"
    A = decode(A_bytes)
    if A is None:
        return False, "A does not decode"
    Rb, Sb = sig[:32], sig[32:]
    S = int.from_bytes(Sb, "little")
    if S >= L:
        return False, "S >= l"
    R = decode(Rb)
    if R is None:
        return False, "R does not decode"
    if small_order(R) or small_order(A):
        return False, "small order"
    k = int.from_bytes(hashlib.sha512(Rb + A_bytes + msg).digest(), "little") % L
    negA = ((-A[0]) % p, A[1], A[2], (-A[3]) % p)
    Rp = add(mul(S, B), mul(k, negA))
    if encode(Rp) != Rb:
        return False, "equation fails"
    return True, "ok"
