"""QSGD baseline (Alistarh et al. 2017): s-level stochastic rounding of |x|/||x||, unbiased.

Each coordinate becomes sign * level with level in 0..s, where level = floor(r) + Bernoulli(frac r),
r = s |x_i| / ||x||; the decoder returns sign * ||x|| * level / s. Two wire codings:

- ``fixed``: one symbol in 0..2s per coordinate (0, or 2*level - 1 + negative), packed at
  ceil(log2(2s + 1)) bits (uint16 above 8 bits).
- ``elias``: Elias-gamma code of level + 1, then a sign bit when level > 0; small levels (the
  common case for small s) cost 1-3 bits. Encoding and decoding are vectorised; the decoder finds
  codeword starts by pointer doubling over the bit stream (O(T log n) for T bits, n codes).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import bitpack
from .base import Codec, Context, Encoded, new_encoded, register

MAX_LEVELS = 32767


# -- Elias-gamma ------------------------------------------------------------------------------
def _bit_length(n: np.ndarray) -> np.ndarray:
    """floor(log2 n) + 1 for integers n >= 1 (exact below 2**53)."""
    return np.frexp(n.astype(np.float64))[1].astype(np.int64)


def elias_gamma_encode(values: np.ndarray, signs: np.ndarray | None = None) -> tuple[bytes, int]:
    """Elias-gamma codewords of `values` (ints >= 1), each followed by its sign bit where
    `signs` is not None and value > 1. Returns (bytes, number of bits); bit order is LSB first."""
    n = np.asarray(values, dtype=np.int64)
    if n.size and int(n.min()) < 1:
        raise ValueError("values: Elias-gamma codes integers >= 1")
    L = _bit_length(n) - 1
    extra = (n > 1).astype(np.int64) if signs is not None else np.zeros_like(n)
    lengths = 2 * L + 1 + extra
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n.size else np.zeros(0, np.int64)
    total = int(lengths.sum())
    bits = np.zeros(total, dtype=np.uint8)
    for k in range(int(L.max()) + 1 if n.size else 0):  # k-th binary digit of n, MSB first
        sel = L >= k
        bits[(starts + L + k)[sel]] = ((n[sel] >> (L[sel] - k)) & 1).astype(np.uint8)
    if signs is not None:
        sel = extra.astype(bool)
        bits[(starts + 2 * L + 1)[sel]] = np.asarray(signs, dtype=np.uint8)[sel]
    return np.packbits(bits, bitorder="little").tobytes(), total


def elias_gamma_decode(data: bytes, nbits: int, count: int, with_signs: bool = False
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverse of `elias_gamma_encode`: (values, signs or None)."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=nbits, bitorder="little").astype(np.int64)
    T = nbits
    if count == 0:
        return np.zeros(0, np.int64), (np.zeros(0, np.uint8) if with_signs else None)
    ones = np.where(bits == 1, np.arange(T), T)
    next_one = np.minimum.accumulate(ones[::-1])[::-1]
    L = next_one - np.arange(T)
    jump = np.arange(T) + 2 * L + 1 + ((L > 0) if with_signs else 0)
    jump = np.minimum(np.where(next_one >= T, T, jump), T)
    jump = np.append(jump, T)
    starts, step = np.zeros(1, np.int64), jump
    while starts.size < count:  # pointer doubling: starts of codes [0, 2^k) -> [0, 2^(k+1))
        starts = np.concatenate([starts, step[starts]])
        step = step[step]
    starts = starts[:count]
    if starts.size and int(starts.max()) >= T:
        raise ValueError(f"payload: Elias-gamma stream ends before {count} codes")
    Ls = L[starts]
    vals = np.zeros(count, dtype=np.int64)
    for k in range(int(Ls.max()) + 1):
        sel = Ls >= k
        vals[sel] = (vals[sel] << 1) | bits[(starts + Ls + k)[sel]]
    signs = None
    if with_signs:
        signs = np.zeros(count, dtype=np.uint8)
        sel = Ls > 0
        signs[sel] = bits[(starts + 2 * Ls + 1)[sel]]
    return vals, signs


# -- codec --------------------------------------------------------------------------------------
def symbol_bits(levels: int) -> int:
    return max(1, math.ceil(math.log2(2 * levels + 1)))


@register
class QSGD(Codec):
    """QSGD with `levels` quantization levels and fixed-width or Elias-gamma coding."""

    name = "qsgd"

    def __init__(self, levels: int = 4, coding: str = "fixed") -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels: got {levels!r}; allowed: an integer 1..{MAX_LEVELS}")
        if coding not in ("fixed", "elias"):
            raise ValueError(f"coding: got {coding!r}; allowed: fixed, elias")
        super().__init__(levels=levels, coding=coding)

    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        s = self.params["levels"]
        xd = x.double()
        norm = float(xd.norm())
        if norm > 0:
            r = (xd.abs() / norm * s).clamp_(max=s)
            low = r.floor()
            u = torch.rand(x.numel(), generator=ctx.generator("qsgd"), dtype=torch.float64).to(x.device)
            level = (low + (u < (r - low)).double()).long().cpu().numpy()
        else:
            level = np.zeros(x.numel(), dtype=np.int64)
        neg = (x < 0).cpu().numpy().astype(np.int64)
        meta: dict = {"norm": norm}
        if self.params["coding"] == "elias":
            body, nbits = elias_gamma_encode(level + 1, signs=neg)
            meta["nbits"] = nbits
        else:
            sym = np.where(level > 0, 2 * level - 1 + neg, 0)
            w = symbol_bits(s)
            if w <= 8:
                body = bitpack.pack(torch.from_numpy(sym.astype(np.uint8)), w).numpy().tobytes()
            else:
                body = sym.astype("<u2").tobytes()
        enc = new_encoded(codes=body)
        enc.meta = meta
        return enc

    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        s, n = int(enc.params["levels"]), enc.numel
        if enc.params.get("coding") == "elias":
            vals, signs = elias_gamma_decode(enc.sections["codes"], int(enc.meta["nbits"]), n, with_signs=True)
            level, neg = vals - 1, signs.astype(np.int64)
        else:
            w = symbol_bits(s)
            if w <= 8:
                raw = torch.frombuffer(bytearray(enc.sections["codes"]), dtype=torch.uint8)
                sym = bitpack.unpack(raw, w, n).numpy().astype(np.int64)
            else:
                sym = np.frombuffer(enc.sections["codes"], dtype="<u2").astype(np.int64)
            level = (sym + 1) // 2
            neg = np.where(sym > 0, (sym + 1) % 2, 0)
        val = (1 - 2 * neg) * level * (float(enc.meta["norm"]) / s)
        return torch.from_numpy(val.astype(np.float32)).to(device)
