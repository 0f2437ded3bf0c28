"""ExactSum: the fold order never changes a bit; error within the quantum bound; overflow refused."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from thinwire.server.exact_sum import INT64_LIMIT, ExactSum


def _updates(seed: int, n: int = 6, numel: int = 5000):
    """Client deltas of very different magnitudes (where float32 summation order matters most)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(numel, generator=g) * 10.0 ** float(torch.randint(-4, 2, (1,), generator=g)) for _ in range(n)]
    ws = [int(torch.randint(1, 700, (1,), generator=g)) for _ in range(n)]
    return xs, ws


def _fold(xs, ws, order, block=777):
    s = ExactSum(xs[0].numel(), block=block)      # a block size that does not divide numel
    for i in order:
        s.add(xs[i], ws[i])
    return s


def test_any_order_gives_identical_bits_where_float32_does_not():
    xs, ws = _updates(0)
    ref = _fold(xs, ws, range(len(xs)))
    ref_mean = ref.mean()
    fp32 = set()
    for order in itertools.islice(itertools.permutations(range(len(xs))), 0, None, 37):   # 20 orders
        s = _fold(xs, ws, order)
        assert torch.equal(s.total, ref.total)
        assert torch.equal(s.mean(), ref_mean)
        acc = torch.zeros_like(xs[0])
        for i in order:
            acc.add_(xs[i], alpha=ws[i])
        fp32.add(acc.numpy().tobytes())
    assert len(fp32) > 1, "baseline: the float32 running sum should depend on the order for this data"


def test_error_is_within_the_derived_bound():
    """|mean - exact| <= q/2 (per-update rounding to the grid, averaged by the weights) + the
    float64 steps (a few ulps) + the final float32 rounding (half an ulp of the result)."""
    for seed in range(3):
        xs, ws = _updates(seed, n=8)
        s = _fold(xs, ws, range(len(xs)))
        exact = sum(x.double() * w for x, w in zip(xs, ws)) / sum(ws)
        got = s.mean().double()
        q = s.quantum
        bound = q / 2 + exact.abs() * (2.0 ** -24 + 4 * 2.0 ** -52) + 1e-300
        err = (got - exact).abs()
        assert bool((err <= bound).all()), float((err - bound).max())
    # the q/2 term is attained: one update of values finer than the grid
    x = torch.rand(5000, generator=torch.Generator().manual_seed(1)) * 1e-4
    s = ExactSum(5000)
    s.add(x, 1)
    grid = (s.sum() - x.double()).abs().max().item()
    assert 0.45 * s.quantum < grid <= s.quantum / 2


def test_overflow_and_bad_input_refused_without_changing_state():
    s = ExactSum(100, frac_bits=32)
    s.add(torch.full((100,), 1000.0), 7)
    before = (s.total.clone(), s.bound, s.weight, s.count)
    limit = INT64_LIMIT / 2 ** 32                       # largest |value| x weight the int64 total can take
    huge = torch.zeros(100)
    huge[3] = float(limit)                              # together with the 7 x 1000 already folded: too much
    cases = [(huge, 1, "update"), (torch.full((100,), float("nan")), 1, "update"),
             (torch.full((100,), float("inf")), 1, "update"), (torch.ones(99), 1, "update"),
             (torch.ones(100, dtype=torch.float64), 1, "update"), (torch.ones(100), 2.5, "weight"),
             (torch.ones(100), -1, "weight")]
    for x, w, field in cases:
        with pytest.raises(ValueError, match=rf"^{field}:"):
            s.add(x, w)
        assert torch.equal(s.total, before[0]) and (s.bound, s.weight, s.count) == before[1:]
    # just inside the bound is taken, and is exact
    room = (INT64_LIMIT - s.bound) // 2 ** 32
    v = np.float32(room)
    if int(v) > room:                                   # the float32 just below the room
        v = np.nextafter(v, np.float32(0))
    assert room - int(v) <= 128                         # float32 spacing near 2**31
    ok = torch.zeros(100)
    ok[5] = float(v)
    s.add(ok, 1)
    assert int(s.total[5]) == (int(v) + 7 * 1000) * 2 ** 32


def test_memory_does_not_grow_with_updates():
    s = ExactSum(10_000, block=1024)
    ptrs = (s.total.data_ptr(), s._f32.data_ptr(), s._i64.data_ptr())
    for i in range(20):
        s.add(torch.randn(10_000), i + 1)
    assert (s.total.data_ptr(), s._f32.data_ptr(), s._i64.data_ptr()) == ptrs
    assert s._f32.numel() == s._i64.numel() == 1024 and math.isclose(s.weight, 210)
    s.reset()
    assert s.weight == 0 and s.bound == 0 and not s.total.any()
    np.testing.assert_array_equal(s.total.numpy(), 0)
