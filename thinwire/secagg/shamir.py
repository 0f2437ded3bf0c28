"""t-of-n Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1 (a Mersenne prime).

A secret s < 2^256 is the constant term of a random polynomial f of degree t - 1; share i is
(i, f(i)) for i = 1..n. Any t shares give s by Lagrange interpolation at 0; fewer reveal nothing
(every value of s is equally likely). Coefficients come from `secrets` (the OS CSPRNG)."""
from __future__ import annotations

import secrets
from typing import Sequence

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66                  # ceil(521 / 8)


def split(secret: bytes, n: int, t: int) -> list[tuple[int, int]]:
    """n shares (x, y) with x = 1..n of a <= 32-byte secret; any t of them reconstruct it."""
    if len(secret) > SECRET_BYTES:
        raise ValueError(f"secret: {len(secret)} bytes; allowed: <= {SECRET_BYTES}")
    if not 1 <= t <= n:
        raise ValueError(f"threshold: t={t} with n={n}; allowed: 1 <= t <= n")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):                 # Horner
            y = (y * x + c) % PRIME
        out.append((x, y))
    return out


def combine(shares: Sequence[tuple[int, int]], t: int) -> bytes:
    """The secret from >= t shares with distinct x (the first t are used)."""
    pts = list(shares)[:t]
    if len(pts) < t or len({x for x, _ in pts}) < t:
        raise ValueError(f"shares: {len(pts)} distinct shares, need t={t}")
    s = 0
    for j, (xj, yj) in enumerate(pts):
        num = den = 1
        for m, (xm, _) in enumerate(pts):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        s = (s + yj * num * pow(den, PRIME - 2, PRIME)) % PRIME
    if s >= 1 << (8 * SECRET_BYTES):
        raise ValueError("shares: they do not interpolate to a 32-byte secret (inconsistent shares)")
    return s.to_bytes(SECRET_BYTES, "big")


def share_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(b: bytes) -> int:
    if len(b) != SHARE_BYTES:
        raise ValueError(f"share: {len(b)} bytes; allowed: {SHARE_BYTES}")
    y = int.from_bytes(b, "big")
    if y >= PRIME:
        raise ValueError("share: not an element of the field")
    return y
