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
_SLAB = 1 << 17              # elements per op with one torch thread: temporaries (512 KB) stay in cache
_SLAB_THREADED = 1 << 22     # with more threads: each op is one parallel region, and on a shared
#                              host every region waits for a descheduled helper, so fewer, larger ops


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


def slab_elems(base: int | None = None) -> int:
    """Elements per elementwise/matmul op in the slabbed kernels (here and in eden_quant): small
    (`base`, default `_SLAB`: cache-resident, no fresh pages to fault in) with one torch thread,
    large with several."""
    base = _SLAB if base is None else base
    return base if torch.get_num_threads() == 1 else max(base, _SLAB_THREADED)


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
    scale = 1.0 / math.sqrt(D)
    _transform(flat, D, store=lambda res, blk, where: blk.copy_(res.mul_(scale)))
    return x


def _transform(flat: torch.Tensor, D: int, load=None, store=None) -> None:
    """Unnormalized WHT of every length-D row of `flat` in place, one bit group after another,
    each in slabs of about `_SLAB` elements (a temporary that stays in cache: slabs of 2^22 made
    every stage page-fault a fresh 16 MB buffer in, 25 % of the transform at d = 2^22).

    Hooks fuse elementwise passes into the first and last stage: `load(p0, p1)` returns the first
    stage's input for positions [p0, p1) (default: flat itself); `store(res, blk, where)` writes
    the last stage's result `res` into its destination view `blk`, `where` = (a0, a1, c0, c1): the
    block flat.view(A, m, right)[a0:a1, :, c0:c1] (default: a copy). Each element passes through
    exactly the same float32 operations whatever the slabs, so the result does not depend on them.
    """
    total = flat.numel()
    slab = slab_elems()
    groups = _groups(D.bit_length() - 1)
    right = 1
    if not groups:                                   # D == 1: H_1 = [1]
        res = flat.clone() if load is None else load(0, total).clone()
        (store or (lambda r, b, w: b.copy_(r)))(res.view(total, 1, 1), flat.view(total, 1, 1), (0, total, 0, 1))
        return
    for gi, bits in enumerate(groups):
        m = 1 << bits
        h = _hadamard_matrix(m, str(flat.device))
        A = total // (m * right)
        view = flat.view(A, m, right)                 # axis 1 is the current bit group
        first, last = gi == 0, gi == len(groups) - 1
        if m * right <= slab or right == 1:
            rows = max(1, slab // (m * right))
            for a0 in range(0, A, rows):
                a1 = min(A, a0 + rows)
                blk = view[a0:a1]
                src = load(a0 * m, a1 * m).view_as(blk) if first and load is not None else blk
                if right == 1:
                    res = torch.matmul(src.view(-1, m), h).view_as(blk)   # h is symmetric
                else:
                    res = torch.matmul(h, src)
                if last and store is not None:
                    store(res, blk, (a0, a1, 0, right))
                else:
                    blk.copy_(res)
        else:                                        # a stage wider than a slab: column blocks
            cols = max(8, slab // m)
            for a in range(A):
                for c0 in range(0, right, cols):
                    c1 = min(right, c0 + cols)
                    blk = view[a:a + 1, :, c0:c1]
                    res = torch.matmul(h, blk[0]).unsqueeze(0)
                    if last and store is not None:
                        store(res, blk, (a, a + 1, c0, c1))
                    else:
                        blk.copy_(res)
        right *= m


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


def sign_bytes(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (n + 7) // 8 random bytes behind `rademacher(n, seed)`: bit j of byte i is the sign of
    coordinate 8i + j. Drawing fewer coordinates gives a prefix of the same stream."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, ((n + 7) // 8,), generator=g, dtype=torch.uint8).to(device)


def _expand(raw: torch.Tensor) -> torch.Tensor:
    """int32 sign masks of 8 coordinates per random byte (any shape; last dim grows 8x)."""
    lut = _sign_lut(str(raw.device))
    return lut.index_select(0, raw.reshape(-1).int()).view(*raw.shape[:-1], raw.shape[-1] * 8)


def sign_masks(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n int32 words, each 0 or the float32 sign bit: the Rademacher signs of `rademacher(n, seed)`
    (bit j of random byte i is the sign of coordinate 8i + j), expanded by one table lookup."""
    return _expand(sign_bytes(n, seed, device)).view(-1)[:n]


def apply_signs_(y: torch.Tensor, seed: int) -> torch.Tensor:
    """In place y *= rademacher(len(y), seed), done by flipping float32 sign bits (no float temp)."""
    y.view(torch.int32).bitwise_xor_(sign_masks(y.numel(), seed, y.device))
    return y


def signed_copy(x: torch.Tensor, seed: int, out: torch.Tensor) -> torch.Tensor:
    """out[:len(x)] = rademacher(len(x), seed) * x for a contiguous float32 x, in one pass."""
    n = x.numel()
    torch.bitwise_xor(x.view(torch.int32), sign_masks(n, seed, x.device), out=out[:n].view(torch.int32))
    return out


def _fusable(D: int) -> bool:
    """The fused rotations need every stage at least 8 wide (sign bytes never straddle a slab)."""
    return D >= 128


def rotate_into(x: torch.Tensor, seed: int, y: torch.Tensor) -> torch.Tensor:
    """y = H (s * pad(x)) (normalized) for a contiguous float32 x and y of length next_pow2 >=
    len(x), s = rademacher(len(x), seed): the same values as `signed_copy` into a zeroed y followed
    by `fwht_(y)`, with the signs applied inside the transform's first stage (no separate pass,
    no vector-sized mask)."""
    n, D = x.numel(), y.numel()
    if not _fusable(D) or not x.is_contiguous():
        y[n:].zero_()
        return fwht_(signed_copy(x, seed, y))
    raw = sign_bytes(n, seed, x.device)
    xi = x.view(torch.int32)

    def load(p0: int, p1: int) -> torch.Tensor:
        if p1 <= n:
            return torch.bitwise_xor(xi[p0:p1], _expand(raw[p0 // 8:p1 // 8])).view(torch.float32)
        t = torch.zeros(p1 - p0, dtype=torch.int32, device=x.device)
        if p0 < n:
            t[:n - p0] = torch.bitwise_xor(xi[p0:n], _expand(raw[p0 // 8:(n + 7) // 8])[:n - p0])
        return t.view(torch.float32)

    scale = 1.0 / math.sqrt(D)
    _transform(y.view(-1), D, load=load, store=lambda res, blk, where: blk.copy_(res.mul_(scale)))
    return y


def unrotate_(y: torch.Tensor, seed: int) -> torch.Tensor:
    """In place y = s * (H y) (normalized), s = rademacher(len(y), seed): `apply_signs_(fwht_(y))`
    with the scaling and the sign flips fused into the last stage's write-back."""
    D = y.numel()
    if not _fusable(D) or not y.is_contiguous() or y.dtype != torch.float32:
        return apply_signs_(fwht_(y), seed)
    raw = sign_bytes(D, seed, y.device)
    scale = 1.0 / math.sqrt(D)
    def store(res: torch.Tensor, blk: torch.Tensor, where: tuple[int, int, int, int]) -> None:
        a0, a1, c0, c1 = where
        m, right = blk.shape[1], blk.stride(1)       # blk is a block of flat.view(A, m, right)
        masks = _expand(raw.view(-1, m, right // 8)[a0:a1, :, c0 // 8:c1 // 8])
        res.mul_(scale)
        torch.bitwise_xor(res.view(torch.int32), masks, out=blk.view(torch.int32))

    _transform(y.view(-1), D, store=store)
    return y


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
