"""Sparsification baselines: top-k (values + indices) and rand-k (shared-seed indices, not sent).

Top-k pays for its indices: the encoder sends whichever is smaller, k int32 indices or a d-bit
bitmap, and the wire size counts it. Rand-k regenerates its indices from the Context, so only
values travel; with `unbiased=True` they are rescaled by d/k (vNMSE = d/k - 1), otherwise the
operator is the biased contraction GRACE uses (E||C(x) - x||^2 = (1 - k/d)||x||^2).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import Codec, Context, Encoded, new_encoded, register
from .cast import tensor_from_bytes, tensor_to_bytes


def check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ValueError(f"fraction: got {fraction!r}; allowed: a number in (0, 1]")
    return float(fraction)


def kept(numel: int, fraction: float) -> int:
    """k = max(1, floor(fraction * numel))."""
    return max(1, min(numel, math.floor(fraction * numel)))


def index_bytes(k: int, numel: int) -> tuple[str, int]:
    """Cheaper index coding for k of numel positions: ("int32", 4k) or ("bitmap", ceil(numel/8))."""
    bitmap = (numel + 7) // 8
    return ("int32", 4 * k) if 4 * k <= bitmap else ("bitmap", bitmap)


@register
class TopK(Codec):
    """Keep the k largest-magnitude coordinates; send values and their positions."""

    name = "topk"

    def __init__(self, fraction: float = 0.01) -> None:
        super().__init__(fraction=check_fraction(fraction))

    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        k = kept(x.numel(), self.params["fraction"])
        idx = torch.topk(x.float().abs(), k, sorted=False).indices.sort().values
        vals = x.float()[idx]
        kind, _ = index_bytes(k, x.numel())
        idx_np = idx.cpu().numpy()
        if kind == "int32":
            ib = idx_np.astype("<i4").tobytes()
        else:
            bits = np.zeros(x.numel(), dtype=np.uint8)
            bits[idx_np] = 1
            ib = np.packbits(bits, bitorder="little").tobytes()
        enc = new_encoded(values=tensor_to_bytes(vals), indices=ib)
        enc.meta = {"index": kind}
        return enc

    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        vals = tensor_from_bytes(enc.sections["values"], torch.float32, device)
        raw = np.frombuffer(enc.sections["indices"], dtype=np.uint8)
        if enc.meta.get("index") == "int32":
            idx = np.frombuffer(enc.sections["indices"], dtype="<i4").astype(np.int64)
        else:
            idx = np.flatnonzero(np.unpackbits(raw, bitorder="little")[:enc.numel])
        if idx.size != vals.numel():
            raise ValueError(f"payload: {idx.size} indices for {vals.numel()} values")
        out = torch.zeros(enc.numel, dtype=torch.float32, device=device)
        out[torch.from_numpy(idx).to(device)] = vals
        return out


def randk_indices(numel: int, k: int, ctx: Context) -> torch.Tensor:
    """k distinct positions from the shared generator (CPU), sorted."""
    perm = torch.randperm(numel, generator=ctx.generator("randk"))
    return perm[:k].sort().values


@register
class RandK(Codec):
    """Keep k uniformly random coordinates; the indices come from the shared seed, not the wire."""

    name = "randk"

    def __init__(self, fraction: float = 0.01, unbiased: bool = True) -> None:
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased: got {unbiased!r}; allowed: true, false")
        super().__init__(fraction=check_fraction(fraction), unbiased=unbiased)

    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        k = kept(x.numel(), self.params["fraction"])
        idx = randk_indices(x.numel(), k, ctx).to(x.device)
        return new_encoded(values=tensor_to_bytes(x.float()[idx]))

    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        k = kept(enc.numel, float(enc.params["fraction"]))
        vals = tensor_from_bytes(enc.sections["values"], torch.float32, device)
        if enc.params.get("unbiased", True):
            vals = vals * (enc.numel / k)
        out = torch.zeros(enc.numel, dtype=torch.float32, device=device)
        out[randk_indices(enc.numel, k, ctx).to(device)] = vals
        return out
