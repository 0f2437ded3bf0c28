"""ExactSum's float64 partial (issue 21): the same integers as an int64 reference, whatever the
order and wherever the partial is flushed into int64; a single step too big for float64 takes
the int64 path."""
from __future__ import annotations

import random

import numpy as np
import torch
from thinwire.server.exact_sum import FLOAT64_EXACT, ExactSum


def _reference(xs, ws, frac_bits=32):
    """sum_i w_i * round_half_even(x_i * 2**frac_bits) in Python integers (numpy int64 is enough)."""
    tot = np.zeros(xs[0].numel(), dtype=object)
    for x, w in zip(xs, ws):
        q = np.rint(x.numpy().astype(np.float64) * 2.0 ** frac_bits).astype(np.int64)   # x * 2**f is exact
        tot = tot + q.astype(object) * w
    return tot


def test_partial_matches_the_int64_reference_across_flushes_and_orders():
    g = torch.Generator().manual_seed(3)
    # magnitudes chosen so the float64 partial crosses 2**53 several times (flushes), plus one
    # update whose own step is above 2**53 (the direct int64 path)
    xs = [torch.randn(3001, generator=g) * s for s in (1e-6, 3.0, 40.0, 40.0, 9.0, 2e-3, 40.0)]
    ws = [1, 700, 10_000, 9_000, 200_000, 123, 8_000]
    ref = _reference(xs, ws)
    means = set()
    flushed = 0
    for seed in range(6):
        order = list(range(len(xs)))
        random.Random(seed).shuffle(order)
        s = ExactSum(3001, block=1000)
        for i in order:
            s.add(xs[i], ws[i])
            flushed += s._total is not None
        assert s.bound > FLOAT64_EXACT                  # the case this test is about
        got = s.total.numpy().astype(object)
        assert (got == ref).all()
        means.add(s.mean().numpy().tobytes())
        assert torch.equal(s.sum(), torch.tensor([float(v) for v in ref], dtype=torch.float64) * s.quantum)
    assert len(means) == 1 and flushed > 0


def test_small_sums_never_allocate_the_int64_total():
    s = ExactSum(10_000)
    for i in range(50):
        s.add(torch.randn(10_000, generator=torch.Generator().manual_seed(i)) * 0.1, 100)
    assert s._total is None                             # 8 bytes per coordinate, not 16
    ref = _reference([torch.randn(10_000, generator=torch.Generator().manual_seed(i)) * 0.1 for i in range(50)],
                     [100] * 50)
    m = s.mean()
    assert s._total is None
    exp = torch.tensor([float(v) for v in ref], dtype=torch.float64) * s.quantum / s.weight
    assert torch.equal(m, exp.float())
