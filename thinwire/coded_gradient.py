"""Partial gradients of sample ranges of a job batch, and the coded combinations gradient-coding
workers send. Shared by the `coded_gradient` client task and the SGC benchmark's trainer.

The job's gradient is the mean-loss gradient over the job batch, so the partial gradient of a
range is d/dw [sum of its losses] / batch: the partial gradients of any partition of the batch sum
to the job gradient exactly, which is what makes coded training equal to uncoded training.
Combinations are formed in float64: decoding coefficients of cyclic codes reach ~1e4, so float32
messages would lose the exactness the decoding guarantees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def param_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_param_vector(model: nn.Module, vec: torch.Tensor) -> None:
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            k = p.numel()
            p.copy_(vec[off:off + k].view_as(p).to(p.dtype))
            off += k


def range_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lo: int, hi: int, total: int) -> torch.Tensor:
    """Flat float64 gradient of sum(loss over samples lo..hi-1) / total."""
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x[lo:hi]), y[lo:hi], reduction="sum") / total
    loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in model.parameters()])


def coded_message(model: nn.Module, x: torch.Tensor, y: torch.Tensor, segments, total: int) -> torch.Tensor:
    """sum over (lo, hi, coef) of coef * range_gradient: one worker's message for one unit."""
    out = None
    for lo, hi, coef in segments:
        g = range_gradient(model, x, y, lo, hi, total)
        out = g.mul_(coef) if out is None else out.add_(g, alpha=coef)
    if out is None:
        out = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    return out


def partition_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds, total: int) -> torch.Tensor:
    """(parts x d) float64 partial gradients of consecutive ranges bounds[k]..bounds[k+1], from one
    batched per-sample gradient pass (torch.func) instead of one backward pass per range."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None], reduction="sum")

    lo, hi = int(bounds[0]), int(bounds[-1])
    per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x[lo:hi], y[lo:hi])
    flat = torch.cat([per[k].reshape(hi - lo, -1) for k in params], dim=1).double() / total
    idx = torch.as_tensor([int(b) - lo for b in bounds], dtype=torch.long)
    csum = torch.cat([torch.zeros(1, flat.shape[1], dtype=torch.float64), flat.cumsum(0)])
    return csum[idx[1:]] - csum[idx[:-1]]
