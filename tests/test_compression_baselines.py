"""Baselines (top-k, rand-k, QSGD with fixed / Elias-gamma coding), stats, and the codec contract
(every codec round-trips through bytes; bad parameters raise one clear ValueError)."""
import math

import numpy as np
import pytest
import torch

from thinwire import compression as C
from thinwire.compression import stats
from thinwire.compression.qsgd import elias_gamma_decode, elias_gamma_encode


D = 1 << 14
ALL_SPECS = ["identity", "fp16", "bf16", "eden:bits=2", "eden:bits=0.5", "eden:bits=3.5", "randblock:ratio=16",
             "topk:fraction=0.01", "topk:fraction=0.3", "randk:fraction=0.1", "randk:fraction=0.1,unbiased=false",
             "qsgd:levels=2", "qsgd:levels=16,coding=elias", "qsgd:levels=1000"]


def _x(seed=0, d=D):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_codec_roundtrips_through_bytes(spec):
    codec = C.from_spec(spec)
    x, ctx = _x(1), C.Context(seed=3, round=1, client_id=2, segments=(D // 2, D // 2))
    enc = codec.encode(x, ctx)
    raw = enc.to_bytes()
    assert len(raw) == enc.nbytes
    back = C.Encoded.from_bytes(raw)
    a, b = codec.decode(enc, ctx), codec.decode(back, ctx)
    assert a.shape == x.shape and torch.equal(a, b)
    assert stats.bits_per_coord(enc) == pytest.approx(8 * len(raw) / D)


def test_topk_keeps_largest_and_counts_cheaper_index():
    x = _x(2)
    for frac, kind in [(0.01, "int32"), (0.3, "bitmap")]:
        enc = C.get("topk", fraction=frac).encode(x)
        k = math.floor(frac * D)
        assert enc.meta["index"] == kind
        assert len(enc.sections["indices"]) == min(4 * k, D // 8)
        xh = C.get("topk", fraction=frac).decode(enc)
        kept = xh != 0
        assert int(kept.sum()) == k and torch.equal(xh[kept], x[kept])
        assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())


def test_randk_unbiased_and_biased_errors_match_theory():
    x, k = _x(3), math.floor(0.1 * D)
    ub, b = C.get("randk", fraction=0.1), C.get("randk", fraction=0.1, unbiased=False)
    trials = 8
    e_ub = sum(stats.vnmse(ub.decode(ub.encode(x, C.Context(seed=s)), C.Context(seed=s)), x) for s in range(trials))
    e_b = sum(stats.vnmse(b.decode(b.encode(x, C.Context(seed=s)), C.Context(seed=s)), x) for s in range(trials))
    # unbiased: d/k - 1; biased contraction: 1 - k/d; relative sd per trial ~ sqrt(2/k)
    assert e_ub / trials == pytest.approx(D / k - 1, rel=0.1)
    assert e_b / trials == pytest.approx(1 - k / D, rel=0.05)


@pytest.mark.parametrize("coding", ["fixed", "elias"])
def test_qsgd_unbiased_with_variance_bound(coding):
    s, T = 4, 30
    x = _x(4, d=4096)
    codec = C.get("qsgd", levels=s, coding=coding)
    acc = torch.zeros_like(x, dtype=torch.float64)
    single = []
    for t in range(T):
        xh = codec.decode(codec.encode(x, C.Context(seed=t))).double()
        single.append(stats.vnmse(xh, x))
        acc += xh
    v = sum(single) / T
    bound = min(x.numel() / s ** 2, math.sqrt(x.numel()) / s)  # QSGD Lemma 3.1
    assert v <= bound
    # Exact for this x: coordinate i rounds r_i = s|x_i|/|x| up with probability p_i = frac(r_i), so
    # its error is c (b_i - p_i), c = |x|/s, b_i ~ Bernoulli(p_i): E[err^2] = c^2 p(1-p) and
    # Var[err^2] = c^4 (p (1-p)^4 + (1-p) p^4) - (c^2 p (1-p))^2. The mean of T trials is within 5
    # standard errors of sum_i E[err_i^2] / |x|^2.
    xd = x.double()
    r = xd.abs() / xd.norm() * s
    p = r - r.floor()
    c2 = float(xd.norm()) ** 2 / s ** 2
    expect = float((c2 * p * (1 - p)).sum()) / float(xd.norm()) ** 2
    var = c2 ** 2 * (p * (1 - p) ** 4 + (1 - p) * p ** 4) - (c2 * p * (1 - p)) ** 2
    se = math.sqrt(float(var.sum()) / T) / float(xd.norm()) ** 2
    assert abs(v - expect) <= 5 * se, (v, expect, se)
    # unbiased: error of the mean is v/T (no bias term); band is ~6 sd of a sum of d terms
    assert stats.vnmse(acc / T, x) == pytest.approx(v / T, rel=0.15)


def test_qsgd_codings_agree_and_elias_is_smaller_for_few_levels():
    x, ctx = _x(5), C.Context(seed=1)
    f, e = C.get("qsgd", levels=2), C.get("qsgd", levels=2, coding="elias")
    ef, ee = f.encode(x, ctx), e.encode(x, ctx)
    assert torch.equal(f.decode(ef), e.decode(ee))
    assert ee.body_size < ef.body_size


def test_elias_gamma_roundtrip_exact():
    rng = np.random.default_rng(0)
    vals = np.concatenate([[1, 2, 3, 4, 7, 8, 255, 256, 65535, 1 << 40], rng.geometric(0.3, 5000)])
    signs = rng.integers(0, 2, vals.size)
    data, nbits = elias_gamma_encode(vals, signs)
    L = np.floor(np.log2(vals)).astype(int)
    assert nbits == int((2 * L + 1 + (vals > 1)).sum())
    got, gs = elias_gamma_decode(data, nbits, vals.size, with_signs=True)
    assert np.array_equal(got, vals) and np.array_equal(gs[vals > 1], signs[vals > 1])
    plain, n2 = elias_gamma_encode(vals)
    assert np.array_equal(elias_gamma_decode(plain, n2, vals.size)[0], vals)
    with pytest.raises(ValueError, match="ends before"):
        elias_gamma_decode(data, nbits // 2, vals.size, with_signs=True)


def test_stats_definitions():
    xs = [torch.ones(4), 3 * torch.ones(4)]
    assert stats.nmse(torch.full((4,), 2.0), xs) == 0
    assert stats.nmse(torch.full((4,), 3.0), xs) == pytest.approx(4 / ((4 + 36) / 2))
    assert stats.vnmse(torch.zeros(4), torch.ones(4)) == 1
    assert stats.send_seconds(125_000, 1e6) == pytest.approx(1.0)


@pytest.mark.parametrize("spec,field", [
    ("eden:bits=0", "bits"), ("eden:bits=9", "bits"), ("randblock:ratio=0.5", "ratio"),
    ("topk:fraction=0", "fraction"), ("topk:fraction=1.5", "fraction"), ("randk:fraction=-0.1", "fraction"),
    ("qsgd:levels=0", "levels"), ("qsgd:levels=2,coding=huffman", "coding"), ("nosuch", "allowed"),
])
def test_bad_parameters_raise_clear_value_error(spec, field):
    with pytest.raises(ValueError, match=field) as e:
        C.from_spec(spec)
    assert "\n" not in str(e.value) and "allowed" in str(e.value)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_empty_and_nan_inputs_rejected(spec):
    codec = C.from_spec(spec)
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.tensor([1.0, float("nan")]))


def test_all_finite_is_exact_when_the_sum_overflows():
    big = torch.full((4,), 3e38)                       # finite values whose float32 sum is inf
    assert C.all_finite(big) and C.all_finite(torch.ones(10, dtype=torch.float16) * 60000)
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not C.all_finite(torch.cat([big, torch.tensor([bad])]))
        assert not C.all_finite(torch.tensor([1.0, bad, -1.0]))
    assert not C.all_finite(torch.tensor([float("inf"), -float("inf")]))
