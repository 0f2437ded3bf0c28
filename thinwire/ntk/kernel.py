"""NTK-FL server math: trace kernel, linearised output evolution, weight update per step count.

Pure functions over the round's stacked uploads: J (N, d_2, p) (p = d, or d' when projected),
initial outputs f0 (N, d_2) and one-hot labels Y (N, d_2). They follow the authors' code
(github.com/KAI-YUE/ntk-fed, see shared/specs/ntkfl.md):

  kernel   H_ij = (1/d_2) sum_c <df_c(x_i)/dw, df_c(x_j)/dw>   (N x N, cross-class blocks dropped)
  CE       df/dt = -(eta/N) H (softmax(f) - Y), integrated with torchdiffeq (dopri5), t in GD steps
  MSE      df/dt = -(eta/(N d_2)) H (f - Y): closed form through the eigendecomposition of H
  weights  dw(tau) = -(eta/n) J^T sum_{s=0}^{tau-1} r(s),  r = softmax(f) - Y (CE, n = N)
                                                         r = f - Y          (MSE, n = N d_2)

i.e. one Euler step of the weight flow per unit time with the Jacobian frozen at the round's
weights; with tau = 1 this is exactly one full-batch gradient step on the pooled data (CE: mean
cross-entropy; MSE: 0.5 * mean squared error over all N d_2 entries). The MSE sum starts at s = 0
like the CE one (the authors' code sums f(1..tau) for MSE, an off-by-one we do not copy).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from thinwire.errors import UserError

LOSSES = ("ce", "mse")
ODE_SEGMENT = 256      # output times per odeint call: bounds memory at segment x N x d_2


class KernelTooLarge(UserError):
    """The round's N x N kernel would exceed the configured sample limit."""


def check_kernel_size(n: int, max_samples: int) -> None:
    """Refuse (one line, naming the flag) a round whose kernel is beyond --ntk-max-samples."""
    if n > max_samples:
        raise KernelTooLarge(
            f"ntk_max_samples: this round holds N={n} samples, so its N x N kernel needs "
            f"{n * n * 8 / 2 ** 20:.0f} MiB; the limit is N <= {max_samples} ({max_samples ** 2 * 8 / 2 ** 20:.0f} MiB); "
            "allowed: raise --ntk-max-samples, lower --per-round, or subsample with --ntk-subsample")


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long().reshape(-1), num_classes).double()


def trace_kernel(jac: torch.Tensor) -> torch.Tensor:
    """H (N, N) float64 from J (N, d_2, p): the Gram matrix of the flattened per-sample Jacobians / d_2."""
    n, d2 = jac.shape[0], jac.shape[1]
    flat = jac.reshape(n, -1).double()
    return (flat @ flat.T) / d2


def _check_taus(taus: Iterable[int]) -> list[int]:
    out = sorted({int(t) for t in taus})
    if not out or out[0] < 1:
        raise ValueError(f"taus: need positive step counts, got {list(taus)}")
    return out


def ce_residual_sums(kernel: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, eta: float, taus: Iterable[int], *,
                     rtol: float = 1e-7, atol: float = 1e-9, method: str = "dopri5",
                     segment: int = ODE_SEGMENT) -> dict[int, torch.Tensor]:
    """{tau: sum_{s=0}^{tau-1} (softmax(f(s)) - Y)} for the CE output ODE, f(0) = f0.

    The ODE is solved once up to max(taus) with torchdiffeq (adaptive dopri5, dense output at the
    integer times), in segments so only `segment` output times are held at once."""
    from torchdiffeq import odeint

    taus = _check_taus(taus)
    h = kernel.double()
    y = y.double()
    rate = float(eta) / h.shape[0]

    def rhs(_t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return -rate * (h @ (torch.softmax(f, dim=1) - y))

    want = set(taus)
    out: dict[int, torch.Tensor] = {}
    acc = torch.zeros_like(y)
    f, s, tmax = f0.double(), 0, taus[-1]
    while s < tmax:
        e = min(s + segment, tmax)
        ts = torch.arange(s, e + 1, dtype=torch.float64)
        sol = odeint(rhs, f, ts, rtol=rtol, atol=atol, method=method)    # sol[i] = f(s + i)
        partial = torch.cumsum(torch.softmax(sol[:-1], dim=2) - y, dim=0)
        for i in range(e - s):
            if s + i + 1 in want:
                out[s + i + 1] = acc + partial[i]
        acc = acc + partial[-1]
        f, s = sol[-1], e
    return out


def _mse_spectrum(kernel: torch.Tensor, eta: float, d2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(decay rates a*lambda >= 0, eigenvectors V) of the MSE flow's matrix (eta/(N d_2)) H."""
    lam, vecs = torch.linalg.eigh(kernel.double())
    rates = lam.clamp_min(0.0) * (float(eta) / (kernel.shape[0] * d2))
    return rates, vecs


def mse_outputs(kernel: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, eta: float,
                times: Iterable[float]) -> dict[float, torch.Tensor]:
    """Closed form f(t) = Y + exp(-(eta/(N d_2)) H t) (f0 - Y) of the MSE output ODE."""
    y = y.double()
    rates, vecs = _mse_spectrum(kernel, eta, y.shape[1])
    r0 = vecs.T @ (f0.double() - y)
    return {t: f0.double() + vecs @ (torch.expm1(-rates * float(t))[:, None] * r0) for t in times}


def mse_residual_sums(kernel: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, eta: float,
                      taus: Iterable[int]) -> dict[int, torch.Tensor]:
    """{tau: sum_{s=0}^{tau-1} (f(s) - Y)} in closed form: per eigen-direction a geometric series,
    (1 - q^tau) / (1 - q) with q = exp(-a lambda), written with expm1 for small a lambda."""
    taus = _check_taus(taus)
    y = y.double()
    rates, vecs = _mse_spectrum(kernel, eta, y.shape[1])
    r0 = vecs.T @ (f0.double() - y)
    flat = rates < 1e-12
    denom = torch.where(flat, torch.ones_like(rates), torch.expm1(-rates))
    out = {}
    for tau in taus:
        series = torch.where(flat, torch.full_like(rates, float(tau)), torch.expm1(-rates * tau) / denom)
        out[tau] = vecs @ (series[:, None] * r0)
    return out


def loss_normaliser(loss: str, n: int, d2: int) -> int:
    """The n in dw = -(eta/n) J^T r: N for mean CE, N d_2 for 0.5 * mean squared error."""
    if loss not in LOSSES:
        raise ValueError(f"loss: unknown {loss!r}; allowed: {', '.join(LOSSES)}")
    return n if loss == "ce" else n * d2


def weight_update(jac: torch.Tensor, residual_sum: torch.Tensor, eta: float, normaliser: int) -> torch.Tensor:
    """dw = -(eta/n) sum_i sum_c J_ic^T R_ic, a (p,) float32 vector."""
    g = torch.einsum("ncp,nc->p", jac.double(), residual_sum.double())
    return (g * (-float(eta) / normaliser)).float()


def evolve(jac: torch.Tensor, f0: torch.Tensor, labels: torch.Tensor, *, loss: str, eta: float,
           taus: Iterable[int], num_classes: int | None = None) -> dict[int, torch.Tensor]:
    """{tau: dw(tau)} in J's column space (R^d, or R^{d'} for projected Jacobians)."""
    n, d2 = jac.shape[0], jac.shape[1]
    if f0.shape != (n, d2) or labels.reshape(-1).shape != (n,):
        raise ValueError(f"ntk: shapes disagree: jacobian {tuple(jac.shape)}, outputs {tuple(f0.shape)}, "
                         f"labels {tuple(labels.shape)}")
    y = one_hot(labels, num_classes or d2)
    h = trace_kernel(jac)
    sums = (ce_residual_sums if loss == "ce" else mse_residual_sums)(h, f0, y, eta, taus)
    norm = loss_normaliser(loss, n, d2)
    return {tau: weight_update(jac, r, eta, norm) for tau, r in sums.items()}


def select_tau(candidates: dict[int, torch.Tensor], score: Callable[[torch.Tensor], float]) -> tuple[int, dict[int, float]]:
    """The step count whose candidate has the lowest score (ties: the smaller tau), and all scores."""
    scores = {tau: float(score(dw)) for tau, dw in sorted(candidates.items())}
    best = min(scores, key=lambda t: (scores[t], t))
    return best, scores
