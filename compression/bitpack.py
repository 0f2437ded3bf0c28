"""Pack b-bit codes (b in 1..8) into a contiguous little-endian bit stream, vectorised.

Layout: code i occupies stream bits [b*i, b*i + b), least significant bit first, and stream bit k
is bit (k mod 8) of byte k // 8. Every group of 8 codes fills exactly b bytes. Because codes are
laid out in index order, a lost byte range [s, e) loses exactly the codes in `lost_codes(s, e, b)`,
a contiguous index range; with an 8-per-byte bit-plane layout the same loss would cost b times
more coordinates. Works on CPU and CUDA tensors (int32/int64 words, no Python loop over codes).
"""
from __future__ import annotations

import torch


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits: got {bits!r}; allowed: an integer 1..8")
    return bits


def packed_size(count: int, bits: int) -> int:
    """Bytes used by `count` codes of `bits` bits: ceil(count * bits / 8)."""
    return (count * check_bits(bits) + 7) // 8


def _i64(v: int) -> int:
    """A 64-bit mask as the signed value torch's int64 ops take."""
    return v - (1 << 64) if v >= 1 << 63 else v


# b = 3: merge byte lanes pairwise inside int64 words: (lane mask, shift, merged mask) per step
_MERGE3 = ((_i64(0x0007000700070007), 5, _i64(0x0038003800380038)),
           (_i64(0x0000003F0000003F), 10, _i64(0x00000FC000000FC0)),
           (_i64(0x0000000000000FFF), 20, _i64(0x0000000000FFF000)))


def _pack_words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Fast `pack` for b in 1..4 and len(codes) % 8 == 0: each code sits in its own byte of a
    machine word; shifts move every code to its stream position (a few whole-array integer ops
    instead of one pass per code lane)."""
    c = codes.to(torch.uint8).contiguous()
    if bits == 4:                                   # 2 codes per byte: c0 | c1 << 4
        w = c.view(torch.int16)
        return (w | (w >> 4)).to(torch.uint8)
    if bits == 2:                                   # 4 per byte: c_j from bit 8j to bit 2j
        w = c.view(torch.int32)
        t = w | (w >> 6)
        t |= w >> 12
        t |= w >> 18
        return t.to(torch.uint8)
    w = c.view(torch.int64)
    if bits == 1:                                   # 8 per byte: c_j from bit 8j to bit j
        w = w | (w >> 7)
        w |= w >> 14
        w |= w >> 28
        return w.to(torch.uint8)
    for lo, shift, hi in _MERGE3:                   # b = 3: 8 codes -> 24 bits -> 3 bytes
        w = (w & lo) | ((w >> shift) & hi)
    return w.view(torch.uint8).view(-1, 8)[:, :3].reshape(-1)


def _unpack3_words(data: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of `_pack_words` for b = 3 (count % 8 == 0): each 3-byte group back to 8 byte lanes."""
    groups = count // 8
    w8 = torch.zeros(groups, 8, dtype=torch.uint8, device=data.device)
    w8[:, :3] = data[:groups * 3].view(groups, 3)
    w = w8.view(-1).view(torch.int64)
    for lo, shift, hi in reversed(_MERGE3):
        w = (w & lo) | ((w & hi) << shift)
    return w.view(torch.uint8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 tensor of `packed_size(len(codes), bits)` bytes; codes must be in [0, 2**bits)."""
    bits = check_bits(bits)
    codes = codes.reshape(-1)
    n = codes.numel()
    if bits <= 4 and n % 8 == 0:
        return _pack_words(codes, bits)
    if bits == 8:
        return codes.to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte, combine in uint8
        per = 8 // bits
        c = torch.zeros((n + per - 1) // per * per, dtype=torch.uint8, device=codes.device)
        c[:n] = codes
        c = c.view(-1, per)
        out = c[:, 0].clone()
        for j in range(1, per):
            out |= c[:, j] << (bits * j)
        return out
    groups = (n + 7) // 8
    wide = torch.int32 if bits <= 4 else torch.int64
    c = torch.zeros(groups * 8, dtype=wide, device=codes.device)
    c[:n] = codes
    c = c.view(groups, 8)
    word = c[:, 0].clone()
    for j in range(1, 8):  # 8 lanes, each vectorised over all groups
        word |= c[:, j] << (bits * j)
    shifts = torch.arange(0, 8 * bits, 8, dtype=wide, device=codes.device)
    out = ((word.unsqueeze(1) >> shifts) & 0xFF).to(torch.uint8).view(-1)
    return out[:packed_size(n, bits)]


def unpack(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack`: `count` codes as a uint8 tensor (on data's device)."""
    bits = check_bits(bits)
    if data.numel() < packed_size(count, bits):
        raise ValueError(f"data: {data.numel()} bytes cannot hold {count} codes of {bits} bits")
    data = data.reshape(-1).to(torch.uint8)
    if bits == 8:
        return data[:count].clone()
    if bits == 3 and count % 8 == 0:
        return _unpack3_words(data, count)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=data.device)
        nb = (count + per - 1) // per
        return ((data[:nb].unsqueeze(1) >> shifts) & ((1 << bits) - 1)).view(-1)[:count]
    groups = (count + 7) // 8
    wide = torch.int32 if bits <= 4 else torch.int64
    b = torch.zeros(groups * bits, dtype=wide, device=data.device)
    used = min(data.numel(), groups * bits)
    b[:used] = data[:used]
    b = b.view(groups, bits)
    word = b[:, 0].clone()
    for k in range(1, bits):
        word |= b[:, k] << (8 * k)
    shifts = torch.arange(0, 8 * bits, bits, dtype=wide, device=data.device)
    codes = ((word.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).to(torch.uint8).view(-1)
    return codes[:count]


def unpack_lookup(data: torch.Tensor, bits: int, count: int, table: torch.Tensor) -> torch.Tensor:
    """table[code] for every packed code, fused with unpacking when codes tile a byte (b = 1, 2, 4):
    a 256-row table maps each byte straight to its 8/b values, so no per-code index is built."""
    bits = check_bits(bits)
    if bits in (1, 2, 4):
        per = 8 // bits
        nb = (count + per - 1) // per
        if data.numel() < nb:
            raise ValueError(f"data: {data.numel()} bytes cannot hold {count} codes of {bits} bits")
        byte = torch.arange(256, device=data.device).unsqueeze(1)
        shifts = torch.arange(0, 8, bits, device=data.device)
        lut = table[(byte >> shifts) & ((1 << bits) - 1)]  # (256, per)
        return _rows(lut).index_select(0, data.reshape(-1)[:nb].to(torch.int32)).view(table.dtype).view(-1)[:count]
    if bits == 3 and count % 8 == 0:
        return _unpack3_lookup(data, count, table)
    return table.index_select(0, unpack(data, bits, count).to(torch.int32))


def _unpack3_lookup(data: torch.Tensor, count: int, table: torch.Tensor) -> torch.Tensor:
    """b = 3: each 3-byte group is two 12-bit halves of 4 codes each; a 4096-row table maps a half
    straight to its 4 values (one gather per 4 codes instead of unpacking then gathering)."""
    groups = count // 8
    if data.numel() < groups * 3:
        raise ValueError(f"data: {data.numel()} bytes cannot hold {count} codes of 3 bits")
    w = torch.zeros(groups, 4, dtype=torch.uint8, device=data.device)
    w[:, :3] = data[:groups * 3].view(groups, 3)
    w = w.view(torch.int32).view(-1)                 # the group's 24 bits, little-endian
    half = torch.empty(groups, 2, dtype=torch.int32, device=data.device)
    torch.bitwise_and(w, 0xFFF, out=half[:, 0])
    torch.bitwise_right_shift(w, 12, out=half[:, 1])
    v = torch.arange(4096, device=data.device).unsqueeze(1)
    lut = table[(v >> torch.arange(0, 12, 3, device=data.device)) & 7]      # (4096, 4)
    return _rows(lut).index_select(0, half.view(-1)).view(table.dtype).view(-1)


def _rows(lut: torch.Tensor) -> torch.Tensor:
    """A (rows, k) float32 table as one wide element per row where a dtype of that width exists
    (8 bytes: int64, 16 bytes: complex128): index_select copies single elements several times
    faster than rows (b = 4: 13 ms -> 2 ms for 2^21 rows). Bits are copied, never computed on."""
    width = lut.shape[1] * lut.element_size()
    wide = {8: torch.int64, 16: torch.complex128}.get(width)
    return lut if wide is None else lut.contiguous().view(wide).view(-1)


def lost_codes(start: int, end: int, bits: int) -> tuple[int, int]:
    """Code index range [first, last) touched by the lost byte range [start, end)."""
    bits = check_bits(bits)
    if end <= start:
        return (0, 0)
    return (8 * start) // bits, (8 * end - 1) // bits + 1


def received_mask(count: int, bits: int, holes: list[tuple[int, int]],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool mask over `count` codes: False where a hole (byte range of this stream) touched the code."""
    ok = torch.ones(count, dtype=torch.bool, device=device)
    for s, e in holes:
        a, b = lost_codes(s, e, bits)
        ok[a:min(b, count)] = False
    return ok
