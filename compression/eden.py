"""EDEN (ICML 2022): randomized Hadamard rotation + Lloyd-Max quantization + one scale per chunk.

Encoding (specs/eden.md): split into chunks (§10, padding overhead capped), per chunk y = H(s * pad(x)),
b-bit codes idx = bucketize(y / rms(y), Lloyd-Max boundaries), and the scale
S = ||y||^2 / <q, y> (unbiased; float64) or <q, y> / ||q||^2 (biased, min-MSE). The decoder
computes S * q, inverse-rotates and truncates.

Budgets: integer b in 1..8; non-integer b > 1 mixes floor/ceil bits with a shared-seed
Bernoulli(frac) mask and one scale; b < 1 keeps each rotated coordinate with probability p = b
(shared-seed mask, nothing about it is sent), 1 bit on the kept ones, rescaled by 1/p.

Randomness: the header carries one 63-bit seed (`meta.seed`, derived from the Context: per client
unless `ctx.shared`) from which every rotation and mask is regenerated, plus the per-chunk scales.
So decoding needs only the Encoded: heterogeneous clients with different `bits` decode with the
params each payload carries. Lost body bytes (holes) zero the affected coordinates and rescale the
received ones of that chunk by sent/received, which keeps the estimate unbiased (rotated
coordinates are exchangeable). `mean_of` averages many payloads; with a shared rotation it sums in
the rotated domain and inverse-rotates once.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from . import bitpack
from .base import Codec, Context, Encoded, derive_seed, new_encoded, register
from .eden_tables import HALF_CENTROIDS
from .hadamard import apply_signs_, fwht_, is_pow2, next_pow2, sign_masks, signed_copy

DEFAULT_MAX_CHUNK = 1 << 24


# -- tables ----------------------------------------------------------------------------------
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


def lloyd_max_mse(bits: int) -> float:
    """D_b = E[(Z - Q(Z))^2] = 1 - E[Q(Z)^2] for Z ~ N(0,1) (theory for the biased scale)."""
    half = HALF_CENTROIDS[bits]
    b = [0.0] + [(half[i] + half[i + 1]) / 2 for i in range(len(half) - 1)] + [math.inf]
    sf = [0.5 * math.erfc(v / math.sqrt(2)) for v in b]
    return 1.0 - 2.0 * sum(c * c * (sf[i] - sf[i + 1]) for i, c in enumerate(half))


def theoretical_vnmse(bits: float, unbiased: bool = True) -> float:
    """Asymptotic vNMSE of one client at budget `bits` (spec §3, §5, §8)."""
    bits = check_bits(bits)
    if bits < 1:
        return (1 + theoretical_vnmse(1, unbiased)) / bits - 1
    lo, frac = int(math.floor(bits)), bits - math.floor(bits)
    e_q2 = 1 - lloyd_max_mse(lo)
    if frac > 0:
        e_q2 = frac * (1 - lloyd_max_mse(lo + 1)) + (1 - frac) * e_q2
    return 1 / e_q2 - 1 if unbiased else 1 - e_q2


# -- parameters --------------------------------------------------------------------------------
def check_bits(bits: float) -> float:
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not math.isfinite(bits) \
            or not 0 < bits <= 8:
        raise ValueError(f"bits: got {bits!r}; allowed: a number in (0, 8] (integers 1..8, fractions mix)")
    return float(bits)


def chunk_sizes(d: int, max_overhead: float = 0.1, max_chunk: int = DEFAULT_MAX_CHUNK) -> list[int]:
    """Split length d so zero padding stays under max_overhead * d and no chunk exceeds max_chunk.

    While the remainder would need more padding than allowed, cut off the largest power of two
    that fits (spec §10); the last piece is padded to next_pow2.
    """
    sizes, rem = [], d
    while rem > 0:
        if rem > max_chunk:
            take = max_chunk
        elif next_pow2(rem) - rem > max_overhead * d:
            take = 1 << (rem.bit_length() - 1)
        else:
            take = rem
        sizes.append(take)
        rem -= take
    return sizes


def _bernoulli(n: int, p: float, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) < p).to(device)


# -- layout: which coordinates carry how many bits -------------------------------------------------
class _Layout:
    """Per chunk: padded size, bit width of every rotated coordinate (0 = not sent), keep prob."""

    def __init__(self, d: int, bits: float, seed: int, max_overhead: float, max_chunk: int,
                 device: torch.device) -> None:
        self.sizes = chunk_sizes(d, max_overhead, max_chunk)
        self.padded = [next_pow2(n) for n in self.sizes]
        self.bits = bits
        lo = int(math.floor(bits))
        self.frac = bits - lo
        self.keep_p = bits if bits < 1 else 1.0
        if bits < 1:
            self.widths = (1,)
        elif self.frac > 0:
            self.widths = (lo, lo + 1)
        else:
            self.widths = (lo,)
        # per chunk, per width: bool mask over the padded chunk, or None meaning "all coordinates"
        self.masks: list[dict[int, torch.Tensor | None]] = []
        for c, D in enumerate(self.padded):
            if bits < 1:
                self.masks.append({1: _bernoulli(D, bits, derive_seed(seed, "keep", c), device)})
            elif self.frac > 0:
                hi = _bernoulli(D, self.frac, derive_seed(seed, "frac", c), device)
                self.masks.append({lo: ~hi, lo + 1: hi})
            else:
                self.masks.append({lo: None})

    def count(self, c: int, w: int) -> int:
        m = self.masks[c][w]
        return self.padded[c] if m is None else int(m.sum())

    def sent(self, c: int) -> int:
        return sum(self.count(c, w) for w in self.widths)


def _stream_name(w: int) -> str:
    return f"codes{w}"


# -- codec -------------------------------------------------------------------------------------
@register
class Eden(Codec):
    """EDEN distributed mean estimation codec (bits per coordinate may be fractional)."""

    name = "eden"
    supports_holes = True

    def __init__(self, bits: float = 2, unbiased: bool = True, max_overhead: float = 0.1,
                 max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        check_bits(bits)
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased: got {unbiased!r}; allowed: true, false")
        if isinstance(max_overhead, bool) or not isinstance(max_overhead, (int, float)) \
                or not 0 <= max_overhead <= 1:
            raise ValueError(f"max_overhead: got {max_overhead!r}; allowed: a number in [0, 1]")
        if not isinstance(max_chunk, int) or not is_pow2(max_chunk) or max_chunk < 8:
            raise ValueError(f"max_chunk: got {max_chunk!r}; allowed: a power of two >= 8")
        super().__init__(bits=bits, unbiased=unbiased, max_overhead=max_overhead, max_chunk=max_chunk)

    # encode ------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        p = self.params
        bits, dev = float(p["bits"]), x.device
        seed = ctx.derive_seed("eden")
        lay = _Layout(x.numel(), bits, seed, p["max_overhead"], p["max_chunk"], dev)
        streams: dict[int, list[torch.Tensor]] = {w: [] for w in lay.widths}
        scales: list[float] = []
        pos = 0
        for c, (n, D) in enumerate(zip(lay.sizes, lay.padded)):
            y = torch.empty(D, dtype=torch.float32, device=dev) if n == D else \
                torch.zeros(D, dtype=torch.float32, device=dev)
            signed_copy(x[pos:pos + n].to(torch.float32).contiguous(), derive_seed(seed, "rot", c), y)
            pos += n
            fwht_(y)
            scale, codes = _quantize(y, lay, c, p["unbiased"])
            scales.append(scale)
            for w in lay.widths:
                streams[w].append(codes[w])
        sections = {_stream_name(w): _to_bytes(bitpack.pack(torch.cat(streams[w]), w)) for w in lay.widths}
        enc = new_encoded(**sections)
        enc.meta = {"seed": seed, "shared": bool(ctx.shared), "scales": scales}
        return enc

    # decode ------------------------------------------------------------------------------
    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        fast = _decode_whole(enc, device)
        if fast is not None:
            return fast
        lay, rotated = rotated_estimate(enc, device)
        seed = int(enc.meta["seed"])
        return _unrotate(rotated, lay, seed, enc.numel)


_BLOCK = 4096


def _sum64(t: torch.Tensor) -> float:
    """Sum with float64 accumulation: exact-enough float32 partials over 4096-element blocks,
    then float64 across blocks (no full float64 copy of the vector)."""
    n = t.numel()
    main = n - n % _BLOCK
    total = 0.0
    if main:
        total += float(t[:main].view(-1, _BLOCK).sum(1).double().sum())
    if main < n:
        total += float(t[main:].double().sum())
    return total


_DOT_BLOCK = 1 << 16


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
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


def _bin_codes(part: torch.Tensor, thr: torch.Tensor, bits: int, rms: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes equal to torch.bucketize(part, thr) (#thresholds < value) and their centroids
    q (float32), without a binary search per element: table lookups on a fine uniform grid decide
    all but the ~1% of values within two cells of a threshold, which are compared exactly."""
    table = centroids(bits, str(part.device))
    if bits == 1:
        codes = (part > thr[0]).view(torch.uint8)
        return codes, table.index_select(0, codes.to(torch.int32))
    lo, w, code_lut, value_lut = _grid(bits, str(part.device))
    u = torch.mul(part, 1.0 / (w * rms))
    u.sub_(lo / w).clamp_(0, _GRID_CELLS - 1)
    k = u.to(torch.int32)
    del u
    codes = code_lut.index_select(0, k)
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


def _quantize_part(part: torch.Tensor, bits: int, rms: float, need_qq: bool) -> tuple[torch.Tensor, float, float]:
    """Codes of one vector part, <q, part> and ||q||^2 (float64; only if need_qq), q = unscaled centroids.

    Codes and q by grid lookup (`_bin_codes`, codes equal to bucketize against the rms-scaled
    Lloyd-Max boundaries); the sums by blockwise dot products.
    """
    thr = boundaries(bits, str(part.device)) * rms
    codes, q = _bin_codes(part, thr, bits, rms)
    return codes, _dot64(q, part), (_dot64(q, q) if need_qq else 0.0)


def _quantize(y: torch.Tensor, lay: _Layout, c: int, unbiased: bool) -> tuple[float, dict[int, torch.Tensor]]:
    """Codes per width for one rotated chunk, and its scale (0 for a zero chunk)."""
    masks = lay.masks[c]
    sub = y[masks[1]] if lay.bits < 1 else y  # b < 1: only kept coordinates are quantized
    sq = _dot64(sub, sub)
    codes: dict[int, torch.Tensor] = {}
    if sq == 0.0 or sub.numel() == 0:
        for w in lay.widths:
            codes[w] = torch.zeros(lay.count(c, w), dtype=torch.uint8, device=y.device)
        return 0.0, codes
    rms = math.sqrt(sq / sub.numel())
    qy = qq = 0.0
    for w in lay.widths:
        m = masks[w]
        part = sub if (m is None or lay.bits < 1) else y[m]
        codes[w], a, b = _quantize_part(part, w, rms, need_qq=not unbiased)
        qy, qq = qy + a, qq + b
    scale = sq / qy if unbiased else qy / qq
    return float(torch.tensor(scale, dtype=torch.float32)), codes


def rotated_estimate(enc: Encoded, device: torch.device | str = "cpu") -> tuple[_Layout, list[torch.Tensor]]:
    """Per chunk, the receiver's estimate of the rotated vector (scaled, hole-corrected)."""
    if enc.codec != Eden.name:
        raise ValueError(f"codec: payload was encoded with {enc.codec!r}, not 'eden'")
    device = torch.device(device)
    p = enc.params
    bits = check_bits(p["bits"])
    seed = int(enc.meta["seed"])
    scales = enc.meta["scales"]
    lay = _Layout(enc.numel, bits, seed, p.get("max_overhead", 0.1), p.get("max_chunk", DEFAULT_MAX_CHUNK), device)
    if len(scales) != len(lay.sizes):
        raise ValueError(f"payload: {len(scales)} scales for {len(lay.sizes)} chunks")
    out = [torch.zeros(D, dtype=torch.float32, device=device) for D in lay.padded]
    received = [0] * len(lay.padded)
    for w in lay.widths:
        name = _stream_name(w)
        total = sum(lay.count(c, w) for c in range(len(lay.padded)))
        raw = torch.frombuffer(bytearray(enc.sections[name]), dtype=torch.uint8).to(device) \
            if enc.sections[name] else torch.zeros(0, dtype=torch.uint8, device=device)
        vals = bitpack.unpack_lookup(raw, w, total, centroids(w, str(device)))
        holes = enc.section_holes(name)
        ok = bitpack.received_mask(total, w, holes, device) if holes else None
        if ok is not None:
            vals = vals * ok
        pos = 0
        for c in range(len(lay.padded)):
            k = lay.count(c, w)
            m = lay.masks[c][w]
            seg = vals[pos:pos + k]
            if m is None:
                out[c].copy_(seg)
            else:
                out[c][m] = seg
            received[c] += k if ok is None else int(ok[pos:pos + k].sum())
            pos += k
    for c in range(len(lay.padded)):
        factor = float(scales[c])
        if received[c] > 0:
            factor *= lay.sent(c) / received[c] / lay.keep_p
        out[c].mul_(factor)
    return lay, out


def _decode_whole(enc: Encoded, device: torch.device) -> torch.Tensor | None:
    """Decode of the common case (integer bits, nothing lost) without intermediate copies: the
    scale rides in the centroid table of the fused unpack + lookup, each chunk is transformed in
    place in the unpacked vector. The same float32 values as `rotated_estimate` + `_unrotate`.
    None when the payload needs the general path (fractional bits, b < 1, holes)."""
    if enc.codec != Eden.name:
        raise ValueError(f"codec: payload was encoded with {enc.codec!r}, not 'eden'")
    p = enc.params
    bits = check_bits(p["bits"])
    if bits != int(bits) or enc.holes:
        return None
    w = int(bits)
    name = _stream_name(w)
    if set(enc.sections) != {name}:
        return None
    sizes = chunk_sizes(enc.numel, p.get("max_overhead", 0.1), p.get("max_chunk", DEFAULT_MAX_CHUNK))
    padded = [next_pow2(n) for n in sizes]
    scales, seed = enc.meta["scales"], int(enc.meta["seed"])
    if len(scales) != len(sizes):
        raise ValueError(f"payload: {len(scales)} scales for {len(sizes)} chunks")
    body = enc.sections[name]
    raw = torch.frombuffer(bytearray(body), dtype=torch.uint8).to(device) if body else \
        torch.zeros(0, dtype=torch.uint8, device=device)
    table = centroids(w, str(device))
    single = len(sizes) == 1
    vals = bitpack.unpack_lookup(raw, w, sum(padded), table * float(scales[0]) if single else table)
    if not vals.is_contiguous():
        vals = vals.contiguous()
    parts, pos = [], 0
    for c, (n, D) in enumerate(zip(sizes, padded)):
        seg = vals[pos:pos + D]
        if not single:
            seg.mul_(float(scales[c]))
        apply_signs_(fwht_(seg), derive_seed(seed, "rot", c))
        parts.append(seg[:n])
        pos += D
    return parts[0] if single else torch.cat(parts)


def _unrotate(rotated: list[torch.Tensor], lay: _Layout, seed: int, numel: int) -> torch.Tensor:
    parts = []
    for c, (n, y) in enumerate(zip(lay.sizes, rotated)):
        apply_signs_(fwht_(y), derive_seed(seed, "rot", c))
        parts.append(y[:n])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _to_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().cpu().numpy().tobytes()


def mean_of(encodings: Sequence[Encoded], ctxs: Sequence[Context] | None = None,
            weights: Sequence[float] | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Server-side (weighted) mean of many clients' EDEN payloads, bits may differ per client.

    The seeds travel in the payloads, so `ctxs` is optional; when given it is checked against them.
    If every payload used the same shared rotation (Context(shared=True), same length and
    chunking), the scaled estimates are summed in the rotated domain and inverse-rotated once:
    O(n d + d log d) instead of O(n d log d).
    """
    if not encodings:
        raise ValueError("encodings: need at least one payload")
    n = len(encodings)
    if weights is None:
        weights = [1.0] * n
    if len(weights) != n or any((not math.isfinite(w)) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights: need one finite non-negative weight per payload, with a positive sum")
    if ctxs is not None:
        if len(ctxs) != n:
            raise ValueError(f"ctxs: got {len(ctxs)} contexts for {n} payloads")
        for e, cx in zip(encodings, ctxs):
            if cx.derive_seed("eden") != int(e.meta["seed"]):
                raise ValueError(f"ctxs: context of client {cx.client_id} does not match its payload's seed")
    numel = encodings[0].numel
    if any(e.numel != numel for e in encodings):
        raise ValueError("encodings: all payloads must have the same length")
    total_w = float(sum(weights))
    device = torch.device(device)
    first = encodings[0]
    chunking = lambda e: (e.params.get("max_overhead", 0.1), e.params.get("max_chunk", DEFAULT_MAX_CHUNK))  # noqa: E731
    shared = all(e.meta.get("shared") and e.meta["seed"] == first.meta["seed"] and chunking(e) == chunking(first)
                 for e in encodings)
    if shared:
        acc = None
        for e, w in zip(encodings, weights):
            lay, rot = rotated_estimate(e, device)
            if acc is None:
                acc = [r.mul_(w / total_w) for r in rot]
            else:
                for a, r in zip(acc, rot):
                    a.add_(r, alpha=w / total_w)
        return _unrotate(acc, lay, int(first.meta["seed"]), numel)
    out = torch.zeros(numel, dtype=torch.float32, device=device)
    codec = Eden()
    for e, w in zip(encodings, weights):
        out.add_(codec.decode(e, device=device).float(), alpha=w / total_w)
    return out
