"""Partial gradients of sample ranges of a job batch, and the coded combinations gradient-coding
workers send (the `coded_gradient` task kind); the job batches are shared with the SGC bench.

The job's gradient is the mean-loss gradient over the job batch, so the partial gradient of a
range is d/dw [sum of its losses] / batch: the partial gradients of any partition of the batch sum
to the job gradient exactly, which is what makes coded training equal to uncoded training.
Combinations are formed in float64 and travel as a float32 hi/lo pair: decoding coefficients of
cyclic codes reach ~1e4, so float32 messages would lose the exactness the decoding guarantees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from thinwire.training import flat_grad


def job_indices(seed: int, job: int, n_train: int, batch: int) -> torch.Tensor:
    """The full-job batch of job `job`: `batch` training-set indices drawn (with replacement) from
    a generator seeded by (seed, job), so master, workers and the uncoded baseline agree."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(job))
    return torch.randint(int(n_train), (int(batch),), generator=g)


def unit_tensor_name(slot: int) -> str:
    """Result tensor name of a worker's unit in M-SGC slot `slot` (one coded message per slot)."""
    return f"slot{int(slot)}"


def range_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lo: int, hi: int, total: int,
                   ) -> tuple[torch.Tensor, float]:
    """(flat float64 gradient, value) of sum(loss over samples lo..hi-1) / total."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x[lo:hi]), y[lo:hi], reduction="sum") / total
    loss.backward()
    return flat_grad(model, like_state=True), float(loss.detach())


def coded_message(model: nn.Module, x: torch.Tensor, y: torch.Tensor, segments, total: int) -> torch.Tensor:
    """One worker's message for one unit: sum over (lo, hi, coef) of coef * [range gradient, range
    loss] (float64, flat model layout + 1). Decoding the last entry gives the job's mean loss."""
    out = None
    for lo, hi, coef in segments:
        g, loss = range_gradient(model, x, y, int(lo), int(hi), total)
        part = torch.cat([g, torch.tensor([loss], dtype=torch.float64)])
        out = part.mul_(float(coef)) if out is None else out.add_(part, alpha=float(coef))
    if out is None:
        from thinwire.training import get_flat
        out = torch.zeros(get_flat(model).numel() + 1, dtype=torch.float64)
    return out


def split_hi_lo(v: torch.Tensor) -> torch.Tensor:
    """float64 -> (2, d) float32 [hi, lo] with hi + lo == v to ~48 bits: what the float32 identity
    codec carries losslessly (decoding coefficients reach ~1e4, so float32 alone would not do)."""
    hi = v.float()
    return torch.stack([hi, (v - hi.double()).float()])


def join_hi_lo(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(2, -1)
    return t[0].double() + t[1].double()
