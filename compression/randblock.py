"""Random block sparsification (DEF, URSB): one contiguous, wrapping block per tensor.

All workers that share a seed (``Context(shared=True)``) pick the same blocks, so no indices travel
and the selected values of every tensor can be summed with one dense all-reduce. The pure
functions `block_slices`, `gather` and `scatter` are what the all-reduce engine calls directly;
the `randblock` codec wraps them for the federated path. No rescaling: as an operator on one
vector the compressor is a biased contraction, E||C(v) - v||^2 = (1 - 1/ratio) ||v||^2.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .base import Codec, Context, Encoded, new_encoded, register
from .cast import tensor_from_bytes, tensor_to_bytes

Block = tuple[int, int]


def check_ratio(ratio: float) -> float:
    """Validate a compression ratio (kept fraction = 1/ratio)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"ratio: got {ratio!r}; allowed: a finite number >= 1")
    return float(ratio)


def block_length(numel: int, ratio: float) -> int:
    """Kept elements of one tensor: max(1, floor(numel / ratio))."""
    return max(1, min(numel, math.floor(numel / ratio)))


def block_slices(segments: Sequence[int] | None, ratio: float, ctx: Context, numel: int | None = None) -> list[Block]:
    """(start, length) slices, as global offsets into the flat vector, of every tensor's block.

    One uniform start offset per tensor is drawn from ``ctx.generator("randblock")`` (CPU, so every
    host agrees); a block that runs past its tensor's end wraps to the tensor's start and yields
    two slices. ``segments=None`` means one tensor of ``numel`` elements.
    """
    ratio = check_ratio(ratio)
    if segments is None:
        if numel is None:
            raise ValueError("segments: give the per-tensor sizes or numel; allowed: a list of positive ints")
        segments = (numel,)
    segs = [int(s) for s in segments]
    if any(s <= 0 for s in segs):
        raise ValueError(f"segments: sizes must be positive; got {segs[:8]}")
    if numel is not None and sum(segs) != numel:
        raise ValueError(f"segments: sum {sum(segs)} does not match vector length {numel}")
    u = torch.rand(len(segs), generator=ctx.generator("randblock"), dtype=torch.float64)
    out: list[Block] = []
    base = 0
    for n, ui in zip(segs, u.tolist()):
        length = block_length(n, ratio)
        start = min(n - 1, int(ui * n))
        first = min(length, n - start)
        out.append((base + start, first))
        if first < length:
            out.append((base, length - first))
        base += n
    return out


def kept_count(blocks: Sequence[Block]) -> int:
    return sum(length for _, length in blocks)


def gather(vec: torch.Tensor, blocks: Sequence[Block]) -> torch.Tensor:
    """Pack the selected values of a flat vector into one dense buffer (block order)."""
    if vec.dim() != 1:
        raise ValueError(f"vec: expected a 1-D tensor, got shape {tuple(vec.shape)}")
    return torch.cat([vec[s:s + n] for s, n in blocks])


def scatter(values: torch.Tensor, blocks: Sequence[Block], numel: int,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of `gather`: a length-`numel` vector with `values` in the blocks and zeros elsewhere."""
    if values.numel() != kept_count(blocks):
        raise ValueError(f"values: has {values.numel()} elements, blocks select {kept_count(blocks)}")
    if out is None:
        out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    pos = 0
    for s, n in blocks:
        out[s:s + n] = values[pos:pos + n]
        pos += n
    return out


def zero_blocks_(vec: torch.Tensor, blocks: Sequence[Block]) -> torch.Tensor:
    """In place: vec <- vec - C(vec), the error-feedback residual of a random block step."""
    for s, n in blocks:
        vec[s:s + n] = 0
    return vec


@register
class RandBlock(Codec):
    """Codec form of the random block compressor; the wire carries only the kept float32 values."""

    name = "randblock"

    def __init__(self, ratio: float = 64.0) -> None:
        super().__init__(ratio=check_ratio(ratio))
        self.ratio = float(ratio)

    def blocks(self, numel: int, ctx: Context) -> list[Block]:
        return block_slices(ctx.segments, self.ratio, ctx, numel=numel)

    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        vals = gather(x.float(), self.blocks(x.numel(), ctx))
        return new_encoded(values=tensor_to_bytes(vals))

    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        vals = tensor_from_bytes(enc.sections["values"], torch.float32, device)
        ratio = float(enc.params.get("ratio", self.ratio))
        return scatter(vals, block_slices(ctx.segments, ratio, ctx, numel=enc.numel), enc.numel)
