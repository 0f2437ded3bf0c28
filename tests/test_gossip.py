"""Decentralized steps from the math (spec cdproxsgt.md): mixing matrices, prox, tracking invariants."""
from __future__ import annotations

import math

import pytest
import torch

from thinwire.errors import ConfigError
from thinwire.gossip.step import AlgoConfig, PeerState, prox_l1, run_reference
from thinwire.gossip.topology import connected, graph, mixing, neighbours, spectral_gap


@pytest.mark.parametrize("spec,n", [("ring", 5), ("torus", 9), ("complete", 4), ("erdos-renyi:0.5", 8),
                                    ("ring", 2)])
def test_mixing_is_symmetric_doubly_stochastic_on_the_graph(spec, n):
    e = graph(spec, n, seed=3)
    W = mixing(e, n)
    assert torch.equal(W, W.T)
    assert torch.allclose(W.sum(0), torch.ones(n, dtype=W.dtype), atol=1e-12)
    assert torch.allclose(W.sum(1), torch.ones(n, dtype=W.dtype), atol=1e-12)
    assert bool((W >= 0).all())
    nb = neighbours(e, n)
    for i in range(n):
        for j in range(n):
            if i != j and j not in nb[i]:
                assert W[i, j] == 0
    # The gap is 1 - (largest |eigenvalue| of W other than the eigenvalue 1 of the all-ones
    # vector), W symmetric: checked against the eigen-decomposition, and in closed form where one
    # exists (Metropolis weights: ring of n >= 3 -> circulant 1/3 + 2/3 cos(2 pi k / n); complete
    # graph -> the exact average 11^T/n, gap 1; two peers -> 1/2 each, gap 1).
    lam = torch.linalg.eigvalsh(W).abs().sort().values
    gap = spectral_gap(W)
    assert gap == pytest.approx(1 - float(lam[-2]), abs=1e-9)
    assert float(lam[-1]) == pytest.approx(1.0, abs=1e-12)
    if spec == "ring" and n >= 3:
        assert gap == pytest.approx(1 - max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n)))
    if spec == "complete" or n == 2:
        assert gap == pytest.approx(1.0, abs=1e-12)
    assert connected(e, n) and gap > 1e-9              # connected <=> eigenvalue 1 is simple


def test_ring_uniform_weights_and_gaps():
    W = mixing(graph("ring", 5), 5, "uniform-ring")
    assert torch.allclose(W[0], torch.tensor([1 / 3, 1 / 3, 0, 0, 1 / 3], dtype=W.dtype))
    # ring with 1/3 weights: eigenvalues (1 + 2 cos(2 pi k / n)) / 3; the gap is 1 - max_{k>0} |.|
    want = 1 - max(abs(1 + 2 * math.cos(2 * math.pi * k / 5)) / 3 for k in range(1, 5))
    assert spectral_gap(W) == pytest.approx(want, abs=1e-12)
    assert spectral_gap(mixing(graph("complete", 6), 6)) == pytest.approx(1.0, abs=1e-12)


def test_bad_topology_is_a_config_error():
    for spec in ("star", "erdos-renyi:2", "missing.csv"):
        with pytest.raises(ConfigError, match="^topology: "):
            graph(spec, 5)


def test_prox_is_the_soft_threshold():
    v = torch.linspace(-2, 2, 401, dtype=torch.float64)
    thr = 0.3
    got = prox_l1(v, thr)
    # brute force argmin_u thr*|u| + (u - v)^2 / 2 over a fine grid
    grid = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    obj = thr * grid.abs().unsqueeze(0) + (grid.unsqueeze(0) - v.unsqueeze(1)) ** 2 / 2
    brute = grid[obj.argmin(1)]
    assert torch.allclose(got, brute, atol=1e-4)
    assert torch.equal(prox_l1(v, 0.0), v)


# -- a heterogeneous toy problem: peer i has its own least squares with noise ---------------------------------
def _toy(n=5, d=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = [torch.randn(20, d, generator=g, dtype=dtype) / math.sqrt(d) for _ in range(n)]
    b = [torch.randn(20, generator=g, dtype=dtype) + 3 * i for i in range(n)]

    def make(i):
        def fn(t, x):
            noise = torch.randn(d, generator=torch.Generator().manual_seed(1000 * t + i), dtype=dtype)
            return A[i].T @ (A[i] @ x - b[i]) / 20 + 0.01 * noise
        return fn

    x0 = torch.randn(d, generator=g, dtype=dtype)
    return [make(i) for i in range(n)], x0


def _run(cfg, steps=30, n=5, record=None, dtype=torch.float64):
    fns, x0 = _toy(n, dtype=dtype)
    e = graph("ring", n)
    W, nb = mixing(e, n, "uniform-ring"), neighbours(e, n)
    states = [PeerState.init(x0) for _ in range(n)]
    run_reference(states, fns, cfg.validate(), W, nb, steps,
                  after_step=(lambda t: record(t, states)) if record else None)
    return states


def test_cdproxsgt_identity_gamma_one_is_dproxsgt():
    kw = dict(lr=0.05, l1=0.01, clip=0.0, seed=1)
    f32 = torch.float32  # the identity codec is float32 on the wire: exact for float32 models
    d = _run(AlgoConfig(algorithm="dproxsgt", **kw), dtype=f32)
    c = _run(AlgoConfig(algorithm="cdproxsgt", codec="identity", gamma_x=1.0, gamma_y=1.0, **kw), dtype=f32)
    # hat = v exactly for the identity codec, and gamma = 1 makes the consensus sum the same ops as mix
    for a, b in zip(d, c):
        assert torch.equal(a.x, b.x), float((a.x - b.x).abs().max())
        assert torch.equal(a.y, b.y)
    assert (d[0].x - d[1].x).abs().max() > 1e-6  # peers differ: it is not a trivial consensus


@pytest.mark.parametrize("codec", ["topk:fraction=0.3", "qsgd:levels=4", "eden:bits=2"])
def test_tracking_mean_is_preserved_despite_compression(codec):
    """mean_i y_i = mean_i g_i after every iteration; the x consensus step keeps mean x."""
    cfg = AlgoConfig(algorithm="cdproxsgt", codec=codec, gamma_x=0.5, gamma_y=0.5, lr=0.05, l1=0.01, clip=0.0)
    prev = {}

    def check(t, states):
        ybar = torch.stack([s.y for s in states]).mean(0)
        gbar = torch.stack([s.g_last for s in states]).mean(0)
        assert torch.allclose(ybar, gbar, atol=1e-6), (t, float((ybar - gbar).abs().max()))
        if prev:
            xhalf = torch.stack([prox_l1(prev[i] - cfg.lr * s.y, cfg.lr * cfg.l1) for i, s in enumerate(states)])
            xbar = torch.stack([s.x for s in states]).mean(0)
            assert torch.allclose(xbar, xhalf.mean(0), atol=1e-6), t
        for i, s in enumerate(states):
            prev[i] = s.x.clone()

    prev_holder = prev
    fns, x0 = _toy()
    prev_holder.update({i: x0.clone() for i in range(5)})
    states = _run(cfg, steps=25, record=check)
    # Bytes: each peer sends the same two compressed messages (x and y) to both ring neighbours per
    # step: 2 x 25 messages per edge, each the size of one encoded 40-vector of this codec (fixed
    # layout plus a JSON header whose numbers vary by a few bytes: 3 %).
    from thinwire import compression as C
    one = len(C.from_spec(codec).encode(torch.randn(40, dtype=torch.float64), C.Context(seed=0)).to_bytes())
    for s in states:
        assert len(s.bytes_sent) == 2 and len(set(s.bytes_sent.values())) == 1    # one message, both neighbours
        for b in s.bytes_sent.values():
            assert b / (2 * 25) == pytest.approx(one, rel=0.03), (b, one)


def test_choco_and_allreduce_run_and_allreduce_keeps_consensus():
    s = _run(AlgoConfig(algorithm="allreduce", lr=0.05, clip=0.0), steps=10)
    assert all(torch.equal(s[0].x, p.x) for p in s)
    c = _run(AlgoConfig(algorithm="choco", codec="topk:fraction=0.3", gamma_x=0.5, lr=0.05, clip=0.0), steps=10)
    assert all(torch.isfinite(p.x).all() for p in c)


def test_divergence_is_a_one_line_user_error():
    from thinwire.gossip.step import Diverged
    with pytest.raises(Diverged, match="diverged"):
        _run(AlgoConfig(algorithm="cdproxsgt", codec="topk:fraction=0.3", lr=1e6, clip=0.0), dtype=torch.float32)
