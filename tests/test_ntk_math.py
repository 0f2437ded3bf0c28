"""NTK-FL math: Jacobians, kernel, output evolution, weight update, random projection."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thinwire.ntk.jacobian import client_jacobian, sample_jacobian, subsample_indices
from thinwire.errors import UserError
from thinwire.models import MLP
from thinwire.ntk.projection import BLOCK_ROWS, RandomProjection
from thinwire.ntk import kernel as ntk
from thinwire.training import get_flat, model_spec


class BNNet(nn.Module):
    """Small net with BN buffers: their Jacobian columns must be zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def _data(n=24, shape=(6,), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _autograd_jacobian(model, x):
    """Reference: one backward pass per (sample, class) over the flat vector's parameter entries."""
    spec = model_spec(model)
    params = dict(model.named_parameters())
    model.eval()
    rows = []
    for i in range(len(x)):
        out = model(x[i:i + 1])[0]
        per_class = []
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], list(params.values()), retain_graph=True)
            by_name = dict(zip(params, grads))
            per_class.append(torch.cat([by_name[n].reshape(-1) if n in by_name else torch.zeros(s)
                                        for n, s in zip(spec.names, spec.segments)]))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


@pytest.mark.parametrize("make", [lambda: MLP((6,), 3, (5, 4)), BNNet])
def test_torch_func_jacobian_equals_autograd_row_by_row(make):
    torch.manual_seed(1)
    model = make()
    if isinstance(model, BNNet):    # non-trivial running stats so the buffers matter in eval mode
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x, _ = _data(10)
    vec = get_flat(model)
    jac, out = sample_jacobian(model, vec, x, chunk=3)
    ref = _autograd_jacobian(model, x)
    assert jac.shape == (10, 3, vec.numel())
    for i in range(10):
        torch.testing.assert_close(jac[i], ref[i], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))


def _pooled_gradient(model, x, y, loss):
    model.zero_grad()
    model.eval()
    logits = model(x)
    if loss == "ce":
        val = F.cross_entropy(logits, y)
    else:
        val = 0.5 * F.mse_loss(logits, F.one_hot(y, logits.shape[1]).float())
    val.backward()
    spec = model_spec(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    return torch.cat([grads[n].reshape(-1) if n in grads else torch.zeros(s) for n, s in zip(spec.names, spec.segments)])


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_one_step_tiny_eta_is_one_full_batch_gradient_step(loss):
    torch.manual_seed(2)
    model = MLP((6,), 3, (16,))
    x, y = _data(30)
    vec = get_flat(model)
    # three "clients" upload; the server pools their rows
    parts = [client_jacobian(model, vec, x[a:b], y[a:b]) for a, b in ((0, 7), (7, 19), (19, 30))]
    jac = torch.cat([p.jacobian for p in parts])
    f0 = torch.cat([p.outputs for p in parts])
    labels = torch.cat([p.labels for p in parts])
    eta = 1e-4
    dw = ntk.evolve(jac, f0, labels, loss=loss, eta=eta, taus=[1])[1]
    step = -eta * _pooled_gradient(model, x, y, loss)
    rel = float((dw - step).norm() / step.norm())
    assert rel < 1e-4, rel


def _problem(n=12, d2=3, p=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(n, d2, p, generator=g, dtype=torch.float64) / math.sqrt(p)
    f0 = torch.randn(n, d2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, d2, (n,), generator=g)
    return jac, f0, labels, ntk.one_hot(labels, d2)


def test_mse_closed_form_equals_numerical_integration():
    from torchdiffeq import odeint

    jac, f0, _, y = _problem()
    h = ntk.trace_kernel(jac) * 50.0          # a kernel with visible dynamics over the horizon
    eta, n, d2 = 0.5, jac.shape[0], jac.shape[1]
    ts = torch.arange(0, 41, dtype=torch.float64)
    sol = odeint(lambda _t, f: -(eta / (n * d2)) * (h @ (f - y)), f0, ts, rtol=1e-10, atol=1e-12)
    closed = ntk.mse_outputs(h, f0, y, eta, [0, 5, 17, 40])
    for t, f in closed.items():
        torch.testing.assert_close(f, sol[t], rtol=1e-7, atol=1e-8)
    assert float((sol[40] - sol[0]).norm()) > 0.1 * float((f0 - y).norm())   # it really moved
    sums = ntk.mse_residual_sums(h, f0, y, eta, [1, 8, 40])
    for tau, r in sums.items():
        torch.testing.assert_close(r, (sol[:tau] - y).sum(0), rtol=1e-7, atol=1e-8)


def test_ce_residual_sums_match_a_fine_fixed_step_integration_and_ignore_segmenting():
    jac, f0, _, y = _problem()
    h = ntk.trace_kernel(jac) * 50.0
    eta, n = 0.5, jac.shape[0]
    # reference: classical RK4 with 200 sub-steps per unit time
    f, ref, acc, sub = f0.clone(), {}, torch.zeros_like(y), 200
    rhs = lambda f: -(eta / n) * (h @ (torch.softmax(f, 1) - y))
    for s in range(30):
        acc = acc + torch.softmax(f, 1) - y
        if s + 1 in (1, 9, 30):
            ref[s + 1] = acc.clone()
        for _ in range(sub):
            dt = 1.0 / sub
            k1 = rhs(f); k2 = rhs(f + dt / 2 * k1); k3 = rhs(f + dt / 2 * k2); k4 = rhs(f + dt * k3)
            f = f + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    got = ntk.ce_residual_sums(h, f0, y, eta, [1, 9, 30])
    got_small = ntk.ce_residual_sums(h, f0, y, eta, [1, 9, 30], segment=7)
    for tau in (1, 9, 30):
        torch.testing.assert_close(got[tau], ref[tau], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got_small[tau], got[tau], rtol=1e-6, atol=1e-7)


def test_ce_training_loss_of_linearised_model_decreases_with_tau():
    jac, f0, labels, y = _problem(n=20, p=60)
    eta = 1.0
    dws = ntk.evolve(jac.float(), f0.float(), labels, loss="ce", eta=eta, taus=[1, 10, 50, 200])
    flat = jac.reshape(jac.shape[0] * jac.shape[1], -1).float()
    losses = [float(F.cross_entropy(f0.float() + (flat @ dws[t]).reshape(f0.shape), labels)) for t in sorted(dws)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_expected_p_pt_is_identity_within_sampling_error():
    d, dim, draws = 20, 64, 200
    acc = torch.zeros(d, d, dtype=torch.float64)
    for s in range(draws):
        p = RandomProjection(s, d, dim).matrix().double()
        acc += p @ p.T
    mean = acc / draws
    # entry variance of P P^T: diagonal 2/d', off-diagonal 1/d'; the mean over `draws` shrinks it
    sd_diag, sd_off = math.sqrt(2 / dim / draws), math.sqrt(1 / dim / draws)
    diag_err = (mean.diagonal() - 1).abs().max()
    off = mean - torch.diag(mean.diagonal())
    assert diag_err < 5 * sd_diag, (float(diag_err), sd_diag)
    assert off.abs().max() < 5.5 * sd_off, (float(off.abs().max()), sd_off)


def test_projection_blocks_agree_and_are_reproducible():
    d, dim = 2 * BLOCK_ROWS + 37, 9
    rows = torch.randn(5, 3, d)
    held = RandomProjection(11, d, dim)
    streamed = RandomProjection(11, d, dim, cache_limit_bytes=0)
    torch.testing.assert_close(held.project(rows), streamed.project(rows), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(held.project(rows), rows @ RandomProjection(11, d, dim).matrix(), rtol=1e-5, atol=1e-5)
    v = torch.randn(dim)
    torch.testing.assert_close(held.back(v), streamed.back(v), rtol=1e-5, atol=1e-5)
    assert not torch.equal(RandomProjection(12, d, dim).matrix(), held.matrix())


def test_projected_kernel_approaches_full_kernel_as_dim_grows():
    torch.manual_seed(4)
    model = MLP((6,), 3, (32,))
    x, y = _data(16)
    vec = get_flat(model)
    full = client_jacobian(model, vec, x, y)
    h = ntk.trace_kernel(full.jacobian)

    def rel_err(dim):
        errs = []
        for seed in range(4):
            pj = client_jacobian(model, vec, x, y, project_dim=dim, projection_seed=seed).jacobian
            errs.append(float((ntk.trace_kernel(pj) - h).norm() / h.norm()) ** 2)
        return math.sqrt(sum(errs) / len(errs))

    small, large = rel_err(64), rel_err(1024)
    # JL: relative error ~ 1/sqrt(d'), so 16x the dimension gives ~4x less error
    assert 2.0 < small / large < 8.0, (small, large)
    assert large < 0.15, large


def test_subsample_is_seeded_sized_and_unique():
    a = subsample_indices(50, 0.3, 7)
    assert len(a) == 15 and len(set(a.tolist())) == 15 and torch.equal(a, subsample_indices(50, 0.3, 7))
    assert not torch.equal(a, subsample_indices(50, 0.3, 8))
    assert len(subsample_indices(3, 0.01, 0)) == 1
    assert torch.equal(subsample_indices(5, 1.0, 0), torch.arange(5))
    with pytest.raises(ValueError):
        subsample_indices(5, 0.0, 0)


def test_kernel_size_guard_is_one_line_user_error():
    ntk.check_kernel_size(100, 100)
    with pytest.raises(UserError) as e:
        ntk.check_kernel_size(101, 100)
    msg = str(e.value)
    assert "\n" not in msg and "ntk_max_samples" in msg and "N=101" in msg


def test_select_tau_lowest_score_ties_to_smaller_tau():
    cands = {t: torch.tensor([float(t)]) for t in (1, 5, 9)}
    best, scores = ntk.select_tau(cands, lambda dw: abs(float(dw) - 5))
    assert best == 5 and scores[1] == 4
    best, _ = ntk.select_tau(cands, lambda dw: 0.0)
    assert best == 1
