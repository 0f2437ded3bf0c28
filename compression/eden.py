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

import dataclasses
import math
from typing import Sequence

import torch

from . import bitpack
from .base import Codec, Context, Encoded, derive_seed, new_encoded, register
from .eden_quant import boundaries, centroids, quantize, sum_squares64
from .eden_tables import HALF_CENTROIDS
from .hadamard import is_pow2, next_pow2, rotate_into, unrotate_

DEFAULT_MAX_CHUNK = 1 << 24
ROTATIONS = ("client", "shared")


def codec_seed(ctx: Context, rotation: str = "client") -> int:
    """The payload's seed: per (round, client) by default; per round only with rotation=shared
    (every client of a round rotates alike, so the server can sum in the rotated domain)."""
    return (dataclasses.replace(ctx, shared=True) if rotation == "shared" else ctx).derive_seed("eden")


# -- tables ----------------------------------------------------------------------------------
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
                 max_chunk: int = DEFAULT_MAX_CHUNK, rotation: str = "client") -> None:
        check_bits(bits)
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased: got {unbiased!r}; allowed: true, false")
        if isinstance(max_overhead, bool) or not isinstance(max_overhead, (int, float)) \
                or not 0 <= max_overhead <= 1:
            raise ValueError(f"max_overhead: got {max_overhead!r}; allowed: a number in [0, 1]")
        if not isinstance(max_chunk, int) or not is_pow2(max_chunk) or max_chunk < 8:
            raise ValueError(f"max_chunk: got {max_chunk!r}; allowed: a power of two >= 8")
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation: got {rotation!r}; allowed: {', '.join(ROTATIONS)}")
        extra = {"rotation": rotation} if rotation != "client" else {}   # default payloads unchanged
        super().__init__(bits=bits, unbiased=unbiased, max_overhead=max_overhead, max_chunk=max_chunk, **extra)

    # encode ------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        p = self.params
        bits, dev = float(p["bits"]), x.device
        seed = codec_seed(ctx, p.get("rotation", "client"))
        shared = bool(ctx.shared) or p.get("rotation") == "shared"
        lay = _Layout(x.numel(), bits, seed, p["max_overhead"], p["max_chunk"], dev)
        streams: dict[int, list[torch.Tensor]] = {w: [] for w in lay.widths}
        scales: list[float] = []
        # integer bits: each chunk's codes are packed as they are made (the concatenated stream is
        # the same bytes when every chunk but the last holds a multiple of 8 codes)
        packed = lay.frac == 0 and bits >= 1 and all(D % 8 == 0 for D in lay.padded[:-1])
        pos = 0
        for c, (n, D) in enumerate(zip(lay.sizes, lay.padded)):
            y = torch.empty(D, dtype=torch.float32, device=dev)
            rotate_into(x[pos:pos + n].to(torch.float32).contiguous(), derive_seed(seed, "rot", c), y)
            pos += n
            scale, codes = _quantize(y, lay, c, p["unbiased"], packed)
            scales.append(scale)
            for w in lay.widths:
                streams[w].append(codes[w])
        if packed:
            sections = {_stream_name(w): b"".join(_to_bytes(t) for t in streams[w]) for w in lay.widths}
        else:
            sections = {_stream_name(w): _to_bytes(bitpack.pack(torch.cat(streams[w]), w)) for w in lay.widths}
        enc = new_encoded(**sections)
        enc.meta = {"seed": seed, "shared": shared, "scales": scales}
        return enc

    # decode ------------------------------------------------------------------------------
    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        fast = _decode_whole(enc, device)
        if fast is not None:
            return fast
        lay, rotated = rotated_estimate(enc, device)
        seed = int(enc.meta["seed"])
        return _unrotate(rotated, lay, seed, enc.numel)


def _quantize_part(part: torch.Tensor, bits: int, rms: float, need_qq: bool,
                   pack: bool = False) -> tuple[torch.Tensor, float, float]:
    """Codes of one vector part (packed if `pack`), <q, part> and ||q||^2 (float64; only if need_qq),
    q = unscaled centroids.

    Codes and q by grid lookup (`eden_quant.quantize`, codes equal to bucketize against the rms-scaled
    Lloyd-Max boundaries); the sums by blockwise dot products, fused slab by slab.
    """
    thr = boundaries(bits, str(part.device)) * rms
    return quantize(part, thr, bits, rms, need_qq, pack)


def _quantize(y: torch.Tensor, lay: _Layout, c: int, unbiased: bool,
              pack: bool = False) -> tuple[float, dict[int, torch.Tensor]]:
    """Codes per width for one rotated chunk (packed if `pack`), and its scale (0 for a zero chunk)."""
    masks = lay.masks[c]
    sub = y[masks[1]] if lay.bits < 1 else y  # b < 1: only kept coordinates are quantized
    sq = sum_squares64(sub)
    codes: dict[int, torch.Tensor] = {}
    if sq == 0.0 or sub.numel() == 0:
        for w in lay.widths:
            codes[w] = torch.zeros(bitpack.packed_size(lay.count(c, w), w) if pack else lay.count(c, w),
                                   dtype=torch.uint8, device=y.device)
        return 0.0, codes
    rms = math.sqrt(sq / sub.numel())
    qy = qq = 0.0
    for w in lay.widths:
        m = masks[w]
        part = sub if (m is None or lay.bits < 1) else y[m]
        codes[w], a, b = _quantize_part(part, w, rms, need_qq=not unbiased, pack=pack)
        qy, qq = qy + a, qq + b
    scale = sq / qy if unbiased else qy / qq
    return float(torch.tensor(scale, dtype=torch.float32)), codes


def rotated_estimate(enc: Encoded, device: torch.device | str = "cpu") -> tuple[_Layout, list[torch.Tensor]]:
    """Per chunk, the receiver's estimate of the rotated vector (scaled, hole-corrected)."""
    lay, _, out = _rotated(enc, device)
    return lay, out


def _rotated(enc: Encoded, device: torch.device | str) -> tuple[_Layout, torch.Tensor, list[torch.Tensor]]:
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
    flat = torch.zeros(sum(lay.padded), dtype=torch.float32, device=device)
    out = list(flat.split(lay.padded))                  # views: the chunks lie back to back
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
    return lay, flat, out


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
        unrotate_(seg, derive_seed(seed, "rot", c))
        parts.append(seg[:n])
        pos += D
    return parts[0] if single else torch.cat(parts)


def rotated_flat(enc: Encoded, device: torch.device | str = "cpu") -> torch.Tensor:
    """The receiver's estimate of the rotated (padded, chunks back to back) vector, scaled and
    hole-corrected, as one float32 tensor: what a shared-rotation server sums across clients."""
    return _rotated(enc, device)[1]


def rotated_layout(enc: Encoded) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(seed, chunk sizes, padded chunk sizes) of a payload: payloads whose layouts are equal can
    be summed in the rotated domain and inverse-rotated once (`unrotate_flat`)."""
    p = enc.params
    sizes = chunk_sizes(enc.numel, p.get("max_overhead", 0.1), p.get("max_chunk", DEFAULT_MAX_CHUNK))
    return int(enc.meta["seed"]), tuple(sizes), tuple(next_pow2(n) for n in sizes)


def unrotate_flat(flat: torch.Tensor, layout: tuple[int, tuple[int, ...], tuple[int, ...]]) -> torch.Tensor:
    """Inverse rotation, in place, of a flat rotated-domain vector with `layout`; returns the
    first-d coordinates of each chunk (length d): one FWHT per chunk, whatever was summed into it."""
    seed, sizes, padded = layout
    if flat.numel() != sum(padded) or not flat.is_contiguous() or flat.dtype != torch.float32:
        raise ValueError(f"flat: need a contiguous float32 vector of {sum(padded)} elements")
    parts, pos = [], 0
    for c, (n, D) in enumerate(zip(sizes, padded)):
        seg = flat[pos:pos + D]
        unrotate_(seg, derive_seed(seed, "rot", c))
        parts.append(seg[:n])
        pos += D
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _unrotate(rotated: list[torch.Tensor], lay: _Layout, seed: int, numel: int) -> torch.Tensor:
    parts = []
    for c, (n, y) in enumerate(zip(lay.sizes, rotated)):
        unrotate_(y, derive_seed(seed, "rot", c))
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
            if codec_seed(cx, e.params.get("rotation", "client")) != int(e.meta["seed"]):
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
