"""NTK-FL client math: the sample-wise Jacobian of the logits w.r.t. the flat model vector.

The Jacobian is taken w.r.t. the same flat vector the engine broadcasts (thinwire.training's
FlatSpec over the floating state dict), so its columns line up with the server's global vector;
float buffers (e.g. BN running statistics) are held constant: their columns are zero, so the NTK
update never moves them. torch.func does it per sample without a
Python loop: vmap over samples of jacrev of a single-sample forward pass (functional_call), in
chunks of samples so peak memory stays at chunk x d_2 x d. CP-NTK-FL subsamples the client's data
and projects every chunk with the shared random projection as soon as it is computed, so the full
N_m x d_2 x d tensor is never held when a projection is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from thinwire.compression.tensors import FlatSpec, unflatten
from thinwire.ntk.projection import RandomProjection
from thinwire.task import derive_seed
from thinwire.training import model_spec

DEFAULT_CHUNK = 64   # samples per vmap call


def _forward_one(model: nn.Module, spec: FlatSpec, vec: torch.Tensor):
    """f(v, x) -> logits (d_2,) for ONE sample, with the parameters taken from `v` and the buffers
    held at their values in `vec` (constants, so their Jacobian columns are zero)."""
    params = {name for name, _ in model.named_parameters()}
    buffers = {k: t for k, t in unflatten(vec, spec).items() if k not in params}

    def f(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tensors = {k: t for k, t in unflatten(v, spec).items() if k in params}
        tensors.update(buffers)
        return functional_call(model, tensors, (x.unsqueeze(0),)).squeeze(0)
    return f


def jacobian_chunks(model: nn.Module, vec: torch.Tensor, x: torch.Tensor, spec: FlatSpec | None = None,
                    chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (J chunk (n, d_2, d), logits chunk (n, d_2)) over the samples of x, at weights `vec`."""
    spec = spec or model_spec(model)
    vec = vec.detach().float().reshape(-1)
    f = _forward_one(model, spec, vec)
    jac_and_out = vmap(jacrev(f), in_dims=(None, 0))
    was_training = model.training
    model.eval()                      # Jacobian of the deterministic network (no dropout, BN in eval)
    try:
        for s in range(0, len(x), chunk):
            xs = x[s:s + chunk]
            jac = jac_and_out(vec, xs)
            with torch.no_grad():
                out = functional_call(model, unflatten(vec, spec), (xs,))
            yield jac.detach(), out.detach()
    finally:
        model.train(was_training)


def sample_jacobian(model: nn.Module, vec: torch.Tensor, x: torch.Tensor, spec: FlatSpec | None = None,
                    chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(J (N, d_2, d), f(X) (N, d_2)) at weights `vec`."""
    parts = list(jacobian_chunks(model, vec, x, spec, chunk))
    if not parts:
        raise ValueError("jacobian: the client has no samples")
    return torch.cat([j for j, _ in parts]), torch.cat([o for _, o in parts])


def subsample_indices(n: int, fraction: float, seed: int) -> torch.Tensor:
    """CP-NTK-FL data subsampling: a seeded random subset of ceil(fraction * n) samples (at least 1)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subsample fraction must be in (0, 1], got {fraction}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    k = max(1, min(n, math.ceil(fraction * n - 1e-9)))
    if k == n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


@dataclass
class JacobianResult:
    """What one client uploads: (projected) Jacobian, labels and outputs over its (subsampled) data."""
    jacobian: torch.Tensor   # (n, d_2, d) or (n, d_2, d') when projected
    labels: torch.Tensor     # (n,) int64
    outputs: torch.Tensor    # (n, d_2) logits f(X) at the received weights


def client_jacobian(model: nn.Module, vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                    subsample: float = 1.0, project_dim: int = 0, projection_seed: int = 0,
                    sample_seed: int = 0, spec: FlatSpec | None = None,
                    chunk: int = DEFAULT_CHUNK) -> JacobianResult:
    """NTK-FL (subsample=1, project_dim=0) or CP-NTK-FL client work at weights `vec`."""
    spec = spec or model_spec(model)
    idx = subsample_indices(len(x), subsample, derive_seed(sample_seed, "ntk-subsample"))
    xs, ys = x[idx], y[idx]
    proj = RandomProjection(projection_seed, spec.numel, project_dim) if project_dim > 0 else None
    jacs, outs = [], []
    for jac, out in jacobian_chunks(model, vec, xs, spec, chunk):
        jacs.append(proj.project(jac) if proj is not None else jac)
        outs.append(out)
    if not jacs:
        raise ValueError("jacobian: the client has no samples")
    return JacobianResult(torch.cat(jacs), ys.long(), torch.cat(outs))
