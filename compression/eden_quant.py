"""EDEN's quantization kernels: the Lloyd-Max tables, bin codes of a rotated vector by grid
lookup (equal to torch.bucketize against the rms-scaled boundaries, several times faster: a
binary search per element costs more than the whole Hadamard transform at b = 4), and float64-
accumulated dot products for the scale. Pure functions over tensors; issue 21 moved them here
from eden.py when they were made fast.
"""
from __future__ import annotations

import functools
import math

import torch

from .eden_tables import HALF_CENTROIDS
from . import bitpack
from .hadamard import slab_elems


@functools.lru_cache(maxsize=64)
def centroids(bits: int, device: str = "cpu") -> torch.Tensor:
    """All 2**bits Lloyd-Max centroids for N(0,1), ascending (float32)."""
    half = torch.tensor(HALF_CENTROIDS[bits], dtype=torch.float64)
    return torch.cat([-half.flip(0), half]).float().to(device)


@functools.lru_cache(maxsize=64)
def boundaries(bits: int, device: str = "cpu") -> torch.Tensor:
    """Midpoints of adjacent centroids (2**bits - 1 values, 0 included)."""
    half = torch.tensor(HALF_CENTROIDS[bits], dtype=torch.float64)
    c = torch.cat([-half.flip(0), half])
    return ((c[1:] + c[:-1]) / 2).float().to(device)


_BLOCK = 4096
_SLAB = 1 << 18                 # a multiple of _BLOCK
_DOT_BLOCK = 1 << 16


def sum_squares64(t: torch.Tensor) -> float:
    """||t||^2 as EDEN has always computed it (float32 squares summed over 4096-element blocks,
    float64 across blocks), so the rms, hence the codes, stay those of earlier payloads."""
    n = t.numel()
    main = n - n % _BLOCK
    total = 0.0
    if main:       # squares in 1 MB slabs (no vector-sized temporary to page-fault in), same block sums
        blocks = torch.cat([(s * s).view(-1, _BLOCK).sum(1) for s in t[:main].split(_SLAB)])
        total += float(blocks.double().sum())
    if main < n:
        total += float((t[main:] * t[main:]).double().sum())
    return total


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> summed in float64 across 65,536-element blocks (one BLAS dot each, no temporary)."""
    return sum(float(torch.dot(u, v)) for u, v in zip(a.split(_DOT_BLOCK), b.split(_DOT_BLOCK)))


_GRID_CELLS = 1 << 14          # cells of the uniform grid over the normalized thresholds' range
_AMBIGUOUS = 255
_TOP_BITS = 0x8080808080808080 - (1 << 64)     # the top bit of every byte of an int64


@functools.lru_cache(maxsize=16)
def _grid(bits: int, device: str) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """A uniform grid over z = y / rms: origin, cell width, and per cell the uint8 code and its
    float32 centroid; code 255 where a threshold is within two cells (decided there by comparing
    exactly: float rounding of the cell index is far below one cell)."""
    half = torch.tensor(HALF_CENTROIDS[bits], dtype=torch.float64)
    c = torch.cat([-half.flip(0), half])
    b = (c[1:] + c[:-1]) / 2                                   # the boundaries, float64
    lo, hi = float(b[0]) - 0.5, float(b[-1]) + 0.5
    w = (hi - lo) / _GRID_CELLS
    k = torch.arange(_GRID_CELLS, dtype=torch.float64)
    left, right = lo + (k - 2) * w, lo + (k + 3) * w          # cell k widened by two cells each side
    left[:3], right[-3:] = -math.inf, math.inf                 # the clamped end cells take all beyond
    c_left = torch.searchsorted(b, left, right=False)          # #thresholds < left
    c_right = torch.searchsorted(b, right, right=False)        # #thresholds < right
    code = torch.where(c_left == c_right, c_left, torch.tensor(_AMBIGUOUS)).to(torch.uint8)
    value = centroids(bits, "cpu")[c_left.clamp(max=len(c) - 1)]
    return lo, w, code.to(device), value.to(device)


_QUANT_SLAB = 1 << 18          # elements per slab of `quantize` (one torch thread; a multiple of _DOT_BLOCK)


def quantize(part: torch.Tensor, thr: torch.Tensor, bits: int, rms: float, need_qq: bool,
             pack: bool = False) -> tuple[torch.Tensor, float, float]:
    """uint8 codes of `part` (as `bin_codes`), <q, part> and ||q||^2 (only if need_qq; as `dot64`,
    bit for bit), one cache-sized slab at a time: the vector-sized temporaries of the unfused
    passes (grid index, q) were page-faulted in on every call, a third of the encoder's time.
    pack: return the codes packed (`bitpack.pack(codes, bits)`), each slab packed while in cache."""
    n = part.numel()
    slab = max(_DOT_BLOCK, slab_elems(_QUANT_SLAB) // _DOT_BLOCK * _DOT_BLOCK)
    if pack:
        out = torch.empty(bitpack.packed_size(n, bits), dtype=torch.uint8, device=part.device)
        buf = torch.empty(min(n, slab), dtype=torch.uint8, device=part.device)
    else:
        out = torch.empty(n, dtype=torch.uint8, device=part.device)
    qy = qq = 0.0
    for s0 in range(0, n, slab):
        seg = part[s0:s0 + slab]
        codes = buf[:seg.numel()] if pack else out[s0:s0 + slab]
        q = bin_codes(seg, thr, bits, rms, out=codes)[1]
        if pack:                  # slab starts are multiples of 8 codes = whole bytes of the stream
            p0 = s0 * bits // 8
            out[p0:p0 + bitpack.packed_size(seg.numel(), bits)] = bitpack.pack(codes, bits)
        for a, b in zip(q.split(_DOT_BLOCK), seg.split(_DOT_BLOCK)):    # the blocks of dot64
            qy += float(torch.dot(a, b))
            if need_qq:
                qq += float(torch.dot(a, a))
    return out, qy, qq


def bin_codes(part: torch.Tensor, thr: torch.Tensor, bits: int, rms: float,
              out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes equal to torch.bucketize(part, thr) (#thresholds < value) and their centroids
    q (float32), without a binary search per element: table lookups on a fine uniform grid decide
    all but the ~1% of values within two cells of a threshold, which are compared exactly.
    `out`: a uint8 tensor of part's length to write the codes into."""
    table = centroids(bits, str(part.device))
    if bits == 1:
        above = torch.gt(part, thr[0], out=None if out is None else out.view(torch.bool))
        codes = above.view(torch.uint8)
        return codes, table.index_select(0, codes.to(torch.int32))
    lo, w, code_lut, value_lut = _grid(bits, str(part.device))
    u = torch.add(torch.tensor(-lo / w, dtype=part.dtype, device=part.device), part, alpha=1.0 / (w * rms))
    u.clamp_(0, _GRID_CELLS - 1)
    k = u.to(torch.int32)
    del u
    codes = code_lut.index_select(0, k) if out is None else torch.index_select(code_lut, 0, k, out=out)
    q = value_lut.index_select(0, k)
    del k
    n = codes.numel()
    if n % 8 == 0:              # find flagged bytes 8 at a time: words with any top bit set
        words = (codes.view(torch.int64) & _TOP_BITS).nonzero().view(-1)
        cand = (words.unsqueeze(1) * 8 + torch.arange(8, device=codes.device)).view(-1)
        amb = cand[codes.index_select(0, cand) == _AMBIGUOUS]
    else:
        amb = (codes == _AMBIGUOUS).nonzero().view(-1)
    if amb.numel():
        fix = torch.bucketize(part.index_select(0, amb), thr, out_int32=True)
        codes.index_copy_(0, amb, fix.to(torch.uint8))
        q.index_copy_(0, amb, table.index_select(0, fix))
    return codes, q


