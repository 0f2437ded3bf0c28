"""EDEN: tables, vNMSE vs theory, unbiasedness (also under loss), mixed budgets, wire round trip.

Tolerances come from the spec's theory: vNMSE(b) = D_b / (1 - D_b) (unbiased scale), b < 1 adds
sampling (1 + v)/p - 1, lost fraction pi acts like p = 1 - pi, and the mean of T independent
encodings has E||mean - x||^2 = v ||x||^2 / T. At d = 2^16 these squared-error statistics
concentrate to about sqrt(2/d) ~ 0.6% relative per trial, so the bands below are several sigma wide.
"""
import math

import pytest
import torch

from thinwire import compression as C
from thinwire.compression.eden import (Eden, centroids, chunk_sizes, lloyd_max_mse, mean_of,
                                       theoretical_vnmse)
from thinwire.compression.eden_tables import HALF_CENTROIDS


D = 1 << 16
SPEC_VNMSE = {1: 0.5708, 2: 0.1331, 3: 0.03578, 4: 0.009592}


def _x(seed=0, d=D):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(d, generator=g))  # LogNormal(0, 1), the authors' harness


def _err(xh, x):
    return float(((xh.double() - x.double()) ** 2).sum() / (x.double() ** 2).sum())


@pytest.mark.parametrize("bits", range(1, 9))
def test_centroids_are_conditional_means_of_their_cells(bits):
    half = HALF_CENTROIDS[bits]
    edges = [0.0] + [(half[i] + half[i + 1]) / 2 for i in range(len(half) - 1)] + [math.inf]
    phi = lambda t: 0.0 if math.isinf(t) else math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    sf = lambda t: 0.5 * math.erfc(t / math.sqrt(2))  # noqa: E731
    for i, c in enumerate(half):
        a, b = edges[i], edges[i + 1]
        assert c == pytest.approx((phi(a) - phi(b)) / (sf(a) - sf(b)), rel=1e-9, abs=1e-12)
    full = centroids(bits)
    assert full.numel() == 2 ** bits and torch.equal(full, -full.flip(0))


def test_tables_agree_with_spec_reference_values():
    assert HALF_CENTROIDS[2][1] == pytest.approx(1.5104176087114887, abs=1e-8)
    assert HALF_CENTROIDS[4][-1] == pytest.approx(2.732588804065177, abs=1e-5)
    for b, v in SPEC_VNMSE.items():
        assert theoretical_vnmse(b) == pytest.approx(v, rel=2e-3)
    assert lloyd_max_mse(1) == pytest.approx(1 - 2 / math.pi, rel=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_vnmse_matches_spec(bits):
    x, codec, trials = _x(1), C.get("eden", bits=bits), 6
    v = sum(_err(codec.decode(codec.encode(x, C.Context(seed=s))), x) for s in range(trials)) / trials
    assert v == pytest.approx(SPEC_VNMSE[bits], rel=0.05)


@pytest.mark.parametrize("bits", [0.25, 0.5, 1.5, 2.5])
def test_fractional_budgets_match_theory_and_rate(bits):
    x, codec, trials = _x(2), C.get("eden", bits=bits), 6
    errs, rates = [], []
    for s in range(trials):
        enc = codec.encode(x, C.Context(seed=s))
        errs.append(_err(codec.decode(enc), x))
        rates.append(8 * enc.body_size / D)
    assert sum(errs) / trials == pytest.approx(theoretical_vnmse(bits), rel=0.05)
    # body bits/coord: binomially distributed around the budget, sd ~ sqrt(p(1-p)/D) * (bit gap)
    assert sum(rates) / trials == pytest.approx(bits, abs=6 / math.sqrt(D) + 8 / D)


def test_unbiased_mean_of_independent_encodings():
    x, codec, T = _x(3), C.get("eden", bits=2), 40
    acc = torch.zeros(D, dtype=torch.float64)
    for s in range(T):
        acc += codec.decode(codec.encode(x, C.Context(seed=5, client_id=s))).double()
    got = _err(acc / T, x)
    # unbiased => E = v/T exactly (no bias^2 term); a 1% scale bias alone would add 1e-4 = 3% here
    assert got == pytest.approx(theoretical_vnmse(2) / T, rel=0.1)


def test_biased_scale_gives_lloyd_max_error():
    x, codec = _x(4), C.get("eden", bits=2, unbiased=False)
    v = sum(_err(codec.decode(codec.encode(x, C.Context(seed=s))), x) for s in range(4)) / 4
    assert v == pytest.approx(lloyd_max_mse(2), rel=0.05)
    assert v < theoretical_vnmse(2)


def test_nmse_over_n_clients_is_vnmse_over_n():
    n, bits = 10, 2
    xs = [_x(10 + i) for i in range(n)]
    codec = C.get("eden", bits=bits)
    ctxs = [C.Context(seed=7, round=1, client_id=i) for i in range(n)]
    encs = [codec.encode(x, cx) for x, cx in zip(xs, ctxs)]
    est = mean_of(encs, ctxs)
    true = sum(xs) / n
    nmse = float(((est - true) ** 2).sum() / (sum(float((x ** 2).sum()) for x in xs) / n))
    assert nmse == pytest.approx(theoretical_vnmse(bits) / n, rel=0.1)


def test_mixed_bit_budgets_combine():
    bits = [0.5, 1, 2, 3, 4, 1.5]
    n, trials = len(bits), 3
    xs = [_x(20 + i) * (1 + i) for i in range(n)]  # different norms too
    norms = [float((x.double() ** 2).sum()) for x in xs]
    want = sum(theoretical_vnmse(b) * s for b, s in zip(bits, norms)) / (n * sum(norms))
    true = sum(xs) / n
    got = 0.0
    for t in range(trials):
        encs = [C.get("eden", bits=b).encode(x, C.Context(seed=t, client_id=i)) for i, (b, x) in enumerate(zip(bits, xs))]
        est = mean_of([C.Encoded.from_bytes(e.to_bytes()) for e in encs])  # server knows nothing else
        got += float(((est.double() - true.double()) ** 2).sum()) / (sum(norms) / n) / trials
    assert got == pytest.approx(want, rel=0.1)


def _drop_chunks(enc, frac, chunk, gen):
    nchunks = math.ceil(enc.body_size / chunk)
    lost = torch.randperm(nchunks, generator=gen)[:round(frac * nchunks)].tolist()
    holes = [(i * chunk, min(enc.body_size, (i + 1) * chunk)) for i in lost]
    return C.Encoded.from_bytes(enc.to_bytes(), holes=holes)


@pytest.mark.parametrize("bits,T", [(2, 40), (0.5, 12), (2.5, 12)])
def test_unbiased_under_ten_percent_lost_chunks(bits, T):
    x, codec, pi = _x(5), C.get("eden", bits=bits), 0.1
    g = torch.Generator().manual_seed(0)
    acc = torch.zeros(D, dtype=torch.float64)
    single = []
    for s in range(T):
        damaged = _drop_chunks(codec.encode(x, C.Context(seed=9, client_id=s)), pi, 512, g)
        assert damaged.holes
        xh = codec.decode(damaged).double()
        single.append(_err(xh, x))
        acc += xh
    v_loss = (1 + theoretical_vnmse(bits)) / (1 - pi) - 1  # loss acts like keep probability 1 - pi
    assert sum(single) / T == pytest.approx(v_loss, rel=0.05)
    assert _err(acc / T, x) == pytest.approx(v_loss / T, rel=0.12)


def test_shared_rotation_fast_path_equals_decoding_each():
    n = 5
    xs = [_x(30 + i, d=5000) for i in range(n)]
    encs = [C.get("eden", bits=1 + i % 3).encode(x, C.Context(seed=2, client_id=i, shared=True))
            for i, x in enumerate(xs)]
    w = [1.0, 2.0, 0.5, 1.0, 3.0]
    fast = mean_of(encs, weights=w)
    codec = Eden()
    slow = sum(wi * codec.decode(e) for wi, e in zip(w, encs)) / sum(w)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5 * float(slow.abs().max()))
    with pytest.raises(ValueError, match="ctxs"):
        mean_of(encs, ctxs=[C.Context(seed=3, shared=True)] * n)


def test_chunking_caps_padding_and_roundtrips():
    for d in (1, 7, 1025, 100003, (1 << 16) + 1):
        sizes = chunk_sizes(d)
        assert sum(sizes) == d
        pad = sum(1 << (s - 1).bit_length() for s in sizes) - d
        assert pad <= 0.1 * d or d < 10
    assert chunk_sizes(1 << 16, max_chunk=1 << 14) == [1 << 14] * 4
    x = torch.randn(100003)
    codec = C.get("eden", bits=3, max_chunk=1 << 14)
    enc = codec.encode(x, C.Context(seed=1))
    assert len(enc.meta["scales"]) == len(chunk_sizes(100003, max_chunk=1 << 14))
    assert _err(codec.decode(C.Encoded.from_bytes(enc.to_bytes())), x) == pytest.approx(0.0358, rel=0.1)


@pytest.mark.parametrize("spec", ["eden:bits=1", "eden:bits=2.5", "eden:bits=0.3", "eden:bits=8,unbiased=false"])
def test_bytes_roundtrip_decodes_identically(spec):
    codec = C.from_spec(spec)
    x = torch.randn(3000).to(torch.bfloat16)
    enc = codec.encode(x, C.Context(seed=4, round=2, client_id=1))
    back = C.Encoded.from_bytes(enc.to_bytes())
    a, b = codec.decode(enc), codec.decode(back)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_zero_and_tiny_vectors():
    codec = C.get("eden", bits=2)
    enc = codec.encode(torch.zeros(100))
    assert set(enc.meta["scales"]) == {0.0} and torch.equal(codec.decode(enc), torch.zeros(100))
    assert torch.equal(codec.decode(codec.encode(torch.tensor([-3.0]))), torch.tensor([-3.0]))


@pytest.mark.parametrize("bad", [0, -1, 9, 8.5, float("nan"), "2", True])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        C.get("eden", bits=bad)


def test_bad_input_and_options():
    codec = C.get("eden", bits=2)
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="max_chunk"):
        C.get("eden", bits=2, max_chunk=1000)
    with pytest.raises(ValueError, match="unbiased"):
        C.get("eden", bits=2, unbiased="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encode_decodes_on_cpu():
    x = torch.randn(10000)
    codec = C.get("eden", bits=2)
    ctx = C.Context(seed=1)
    enc_gpu, enc_cpu = codec.encode(x.cuda(), ctx), codec.encode(x, ctx)
    assert enc_gpu.meta["seed"] == enc_cpu.meta["seed"]
    torch.testing.assert_close(codec.decode(enc_gpu), codec.decode(enc_cpu), rtol=0, atol=1e-4)
    torch.testing.assert_close(codec.decode(enc_cpu, device="cuda").cpu(), codec.decode(enc_cpu), rtol=0, atol=1e-5)
