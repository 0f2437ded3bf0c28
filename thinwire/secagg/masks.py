"""Masks mod 2^k and the neighbour graph they are drawn over.

Client u sends y_u = x_u + PRG(b_u) + sum_{v in N(u)} sign(u, v) PRG(s_uv)  (mod 2^k), with
sign(u, v) = +1 for u < v and -1 for u > v, so every pairwise mask appears once with each sign
and the sum over all clients cancels it exactly; the self mask PRG(b_u) is removed by the server
once it has rebuilt b_u from shares (double masking: revealing s_u of a client that only looked
dropped does not unmask it). Everything here is integer arithmetic in uint64 reduced mod 2^k.

Graph (SecAgg+, Bell et al. 2020): a Harary-style ring over a seeded permutation of the clients,
each linked to its `degree` nearest ring neighbours (all others when degree >= n - 1)."""
from __future__ import annotations

import numpy as np

from thinwire.secagg.crypto import prg


def neighbours(clients: list[int], degree: int, seed: int) -> dict[int, list[int]]:
    """Symmetric neighbour lists: degree >= n - 1 is the complete graph of Bonawitz et al."""
    n = len(clients)
    if degree >= n - 1:
        return {u: [v for v in clients if v != u] for u in clients}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree: {degree}; allowed: an even number >= 2, or >= clients - 1")
    order = [clients[i] for i in np.random.default_rng([seed, 2017]).permutation(n)]
    out: dict[int, set[int]] = {u: set() for u in clients}
    for i, u in enumerate(order):
        for j in range(1, degree // 2 + 1):
            v = order[(i + j) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(vs) for u, vs in out.items()}


def threshold(degree: int) -> int:
    """Shares needed to rebuild a secret: a majority of the dealer's neighbours, floor(deg / 2) + 1."""
    return degree // 2 + 1


def wrap(x: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers -> their residues mod 2^bits (uint64, two's complement)."""
    return x.astype(np.int64).view(np.uint64) & np.uint64((1 << bits) - 1)


def unwrap(r: np.ndarray, bits: int) -> np.ndarray:
    """Residues mod 2^bits -> the signed integers in [-2^(bits-1), 2^(bits-1))."""
    r = r.astype(np.uint64) & np.uint64((1 << bits) - 1)
    s = r.astype(np.int64)
    return np.where(s >= (1 << (bits - 1)), s - (1 << bits), s)


def pair_mask(u: int, v: int, seed: bytes, count: int, bits: int) -> np.ndarray:
    """u's signed share of the mask of pair (u, v), as a residue: +PRG for u < v, -PRG for u > v."""
    m = prg(seed, count, bits)
    return m if u < v else (np.uint64(0) - m) & np.uint64((1 << bits) - 1)


def add_mod(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    return (a + b) & np.uint64((1 << bits) - 1)


def sub_mod(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    return (a - b) & np.uint64((1 << bits) - 1)


def pack_bits(r: np.ndarray, bits: int) -> bytes:
    """k-bit residues -> a little-endian bit stream of ceil(n k / 8) bytes (what goes on the wire)."""
    planes = ((r.astype(np.uint64)[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    if len(data) != (count * bits + 7) // 8:
        raise ValueError(f"masked input: {len(data)} bytes, expected {(count * bits + 7) // 8} for {count} x {bits} bits")
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:count * bits]
    planes = planes.reshape(count, bits).astype(np.uint64)
    return (planes << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
