"""Error and size statistics for codecs (spec §8 definitions), used by tests and the bench."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import Encoded


def vnmse(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """||x_hat - x||^2 / ||x||^2 for one client (float64 accumulation)."""
    x = x.reshape(-1).double()
    den = float((x * x).sum())
    if den == 0:
        raise ValueError("x: zero vector, NMSE undefined")
    return float(((x_hat.reshape(-1).double() - x) ** 2).sum()) / den


def nmse(mean_hat: torch.Tensor, xs: Sequence[torch.Tensor]) -> float:
    """||mean_hat - mean(x_i)||^2 / ((1/n) sum ||x_i||^2), the distributed mean estimation error."""
    if not xs:
        raise ValueError("xs: need at least one client vector")
    stack = [x.reshape(-1).double() for x in xs]
    mean = sum(stack) / len(stack)
    den = sum(float((x * x).sum()) for x in stack) / len(stack)
    if den == 0:
        raise ValueError("xs: all-zero vectors, NMSE undefined")
    return float(((mean_hat.reshape(-1).double() - mean) ** 2).sum()) / den


def bits_per_coord(enc: Encoded) -> float:
    """Bits on the wire per coordinate, header included."""
    return 8.0 * enc.nbytes / max(1, enc.numel)


def compression_ratio(enc: Encoded) -> float:
    """Dense float32 bytes over the bytes actually sent."""
    return 4.0 * enc.numel / enc.nbytes


def send_seconds(nbytes: int, bits_per_second: float) -> float:
    """Serialisation time of `nbytes` over a link (no latency term)."""
    return 8.0 * nbytes / bits_per_second
