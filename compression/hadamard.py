"""Fast Walsh-Hadamard transform (normalized, Sylvester order) and the randomized rotation.

H_D = H_2 (x) H_2 (x) ... (x) H_2, so the transform factors over any grouping of the log2(D) index
bits. We apply it as a few small dense Hadamard matmuls (H_m with m <= 2^6) along successive bit
groups: O(D log D) work with a BLAS-sized inner loop, far fewer passes over memory than log2(D)
butterfly levels. Each group is processed in slabs and written back in place, so the extra memory
is bounded (`_SLAB` elements) even for very large vectors. Computation is in float32.
"""
from __future__ import annotations

import functools
import math

import torch

from .base import Context

_MAX_GROUP_BITS = 6          # H_64 blocks: 64 MACs per element per group
_SLAB = 1 << 22              # elements processed per matmul (bounds the temporary)


def next_pow2(d: int) -> int:
    """2**ceil(log2 d); a power of two maps to itself."""
    if d < 1:
        raise ValueError(f"d: got {d}; allowed: a positive integer")
    return 1 << (d - 1).bit_length()


def is_pow2(d: int) -> bool:
    return d >= 1 and d & (d - 1) == 0


@functools.lru_cache(maxsize=32)
def _hadamard_matrix(m: int, device: str) -> torch.Tensor:
    """Unnormalized Sylvester H_m (entries +-1), float32."""
    h = torch.ones(1, 1)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(device)


def _groups(n_bits: int) -> list[int]:
    """Split n_bits into nearly equal groups of at most _MAX_GROUP_BITS bits."""
    if n_bits == 0:
        return []
    k = math.ceil(n_bits / _MAX_GROUP_BITS)
    base, extra = divmod(n_bits, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def fwht_(x: torch.Tensor) -> torch.Tensor:
    """In place normalized WHT of a contiguous float32 tensor along its last dim (a power of two).

    H is orthonormal and its own inverse, so the same call rotates and un-rotates.
    """
    D = x.shape[-1]
    if not is_pow2(D):
        raise ValueError(f"length: {D} is not a power of two; pad with next_pow2 first")
    if x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError("x: fwht_ needs a contiguous float32 tensor")
    flat = x.view(-1)
    total = flat.numel()
    right = 1
    for bits in _groups(D.bit_length() - 1):
        m = 1 << bits
        h = _hadamard_matrix(m, str(x.device))
        view = flat.view(total // (m * right), m, right)  # axis 1 is the current bit group
        rows = max(1, _SLAB // (m * right))
        for s in range(0, view.shape[0], rows):
            blk = view[s:s + rows]
            if right == 1:
                blk.copy_(torch.matmul(blk.view(-1, m), h).view_as(blk))  # h is symmetric
            else:
                blk.copy_(torch.matmul(h, blk))
        right *= m
    return flat.mul_(1.0 / math.sqrt(D)).view_as(x)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Out-of-place normalized WHT; pads the last dim with zeros to next_pow2 (float32 result)."""
    D = next_pow2(x.shape[-1])
    y = torch.zeros(*x.shape[:-1], D, dtype=torch.float32, device=x.device)
    y[..., :x.shape[-1]] = x
    return fwht_(y)


def rademacher(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n i.i.d. +-1 float32 signs from a CPU generator seeded with `seed` (identical on every host)."""
    g = torch.Generator().manual_seed(seed)
    nbytes = (n + 7) // 8
    raw = torch.randint(0, 256, (nbytes,), generator=g, dtype=torch.uint8).to(device)
    shifts = torch.arange(8, dtype=torch.uint8, device=device)
    bits = (raw.unsqueeze(1) >> shifts).bitwise_and_(1).view(-1)[:n]
    return bits.to(torch.float32).mul_(-2.0).add_(1.0)


@functools.lru_cache(maxsize=8)
def _sign_lut(device: str) -> torch.Tensor:
    """(256, 8) int32: row b, column j is bit j of byte b moved to the float32 sign bit."""
    b = torch.arange(256, dtype=torch.int32).unsqueeze(1)
    j = torch.arange(8, dtype=torch.int32)
    return ((b >> j) & 1).bitwise_left_shift_(31).to(device)


def sign_masks(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n int32 words, each 0 or the float32 sign bit: the Rademacher signs of `rademacher(n, seed)`
    (bit j of random byte i is the sign of coordinate 8i + j), expanded by one table lookup."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, ((n + 7) // 8,), generator=g, dtype=torch.uint8).to(device)
    return _sign_lut(str(torch.device(device))).index_select(0, raw.int()).view(-1)[:n]


def apply_signs_(y: torch.Tensor, seed: int) -> torch.Tensor:
    """In place y *= rademacher(len(y), seed), done by flipping float32 sign bits (no float temp)."""
    y.view(torch.int32).bitwise_xor_(sign_masks(y.numel(), seed, y.device))
    return y


def signed_copy(x: torch.Tensor, seed: int, out: torch.Tensor) -> torch.Tensor:
    """out[:len(x)] = rademacher(len(x), seed) * x for a contiguous float32 x, in one pass."""
    n = x.numel()
    torch.bitwise_xor(x.view(torch.int32), sign_masks(n, seed, x.device), out=out[:n].view(torch.int32))
    return out


def rotation_seed(ctx: Context, tag: str = "rht") -> int:
    """Seed of a randomized Hadamard rotation: per client unless ctx.shared."""
    return ctx.derive_seed(tag)


def rht(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Randomized Hadamard rotation y = H (s * pad(x)); returns a new float32 vector of length next_pow2."""
    d = x.numel()
    D = next_pow2(d)
    y = torch.zeros(D, dtype=torch.float32, device=x.device)
    y[:d] = x.reshape(-1)
    return fwht_(apply_signs_(y, seed))


def irht_(y: torch.Tensor, seed: int, d: int | None = None) -> torch.Tensor:
    """Inverse rotation in place: x = s * (H y), truncated to the first d entries."""
    apply_signs_(fwht_(y), seed)
    return y if d is None else y[:d]
