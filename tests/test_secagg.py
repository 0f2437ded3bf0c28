"""Secure aggregation math (issue 23): masks cancel exactly, dropouts after masking are recovered,
tampered shares are refused, and the server never holds an individual input."""
from __future__ import annotations

import numpy as np
import pytest

from thinwire.secagg import SecAggError, SecAggParams, run_round, shamir
from thinwire.secagg.masks import neighbours, threshold, pack_bits, unpack_bits, unwrap, wrap


def _inputs(n: int, d: int, seed: int = 0, lo: int = -1000, hi: int = 1000) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {3 * i + 1: rng.integers(lo, hi, d) for i in range(n)}        # ids need not be 0..n-1


def test_shamir_any_t_shares_rebuild_and_fewer_do_not():
    secret = bytes(range(32))
    shares = shamir.split(secret, 7, 4)
    for pick in ([0, 1, 2, 3], [6, 4, 2, 0], [1, 3, 5, 6]):
        assert shamir.combine([shares[i] for i in pick], 4) == secret
    with pytest.raises(ValueError, match="need t=4"):
        shamir.combine(shares[:3], 4)
    # 3 shares with a wrong 4th (tampered y) interpolate to another value, not the secret
    bad = shares[:3] + [(shares[3][0], (shares[3][1] + 1) % shamir.PRIME)]
    try:
        assert shamir.combine(bad, 4) != secret
    except ValueError:
        pass


def test_bit_packing_round_trips():
    r = np.random.default_rng(1).integers(0, 1 << 11, 1001).astype(np.uint64)
    data = pack_bits(r, 11)
    assert len(data) == (1001 * 11 + 7) // 8
    assert np.array_equal(unpack_bits(data, 11, 1001), r)
    x = np.array([-5, 0, 7, -1024, 1023])
    assert np.array_equal(unwrap(wrap(x, 11), 11), x)


def test_graph_is_symmetric_with_the_stated_degree():
    ids = list(range(0, 60, 2))
    g = neighbours(ids, 8, seed=3)
    assert all(len(v) == 8 for v in g.values())
    assert all(u in g[v] for u in g for v in g[u])
    assert all(len(v) == 29 for v in neighbours(ids, 100, 0).values())
    assert threshold(8) == 5 and threshold(99) == 50


@pytest.mark.parametrize("degree", [0, 6])          # complete graph (Bonawitz) and sparse (SecAgg+)
def test_masks_cancel_exactly(degree):
    xs = _inputs(12, 500)
    p = SecAggParams(count=500, bits=20, degree=degree, context=b"run/0")
    total, server, _ = run_round(xs, p)
    assert np.array_equal(unwrap(total, 20), sum(xs.values()))
    # ... and no single masked input is the input (nor near it: they look uniform mod 2^20)
    for cid, y in server.masked.items():
        assert not np.array_equal(unwrap(y, 20), xs[cid])
        assert abs(np.corrcoef(unwrap(y, 20).astype(float), xs[cid].astype(float))[0, 1]) < 0.2


def test_the_sum_wraps_mod_2k_like_the_integers():
    xs = _inputs(5, 64, lo=0, hi=1 << 20)
    total, _, _ = run_round(xs, SecAggParams(count=64, bits=16, context=b"w"))
    assert np.array_equal(total.astype(np.int64), sum(xs.values()) % (1 << 16))


@pytest.mark.parametrize("degree", [0, 8])
def test_dropouts_after_masking_are_recovered(degree):
    xs = _inputs(20, 300, seed=2)
    drop = {4, 31, 52}                               # 15 % vanish after sharing their keys
    total, server, clients = run_round(xs, SecAggParams(count=300, bits=24, degree=degree, context=b"d"),
                                       drop_after_shares=drop)
    assert np.array_equal(unwrap(total, 24), sum(v for c, v in xs.items() if c not in drop))
    assert set(server.survivors()) == set(xs) - drop


def test_too_many_dropouts_end_with_a_clear_error():
    xs = _inputs(8, 10)
    drop = set(list(xs)[:5])                         # t = 4 of 7 peers needed; only 3 survive
    with pytest.raises(SecAggError, match="need t=4"):
        run_round(xs, SecAggParams(count=10, bits=16, context=b"x"), drop_after_shares=drop)


def test_a_tampered_sealed_share_is_refused_by_its_receiver():
    xs = _inputs(9, 40)
    victim, dealer = list(xs)[0], list(xs)[1]

    def flip(server, clients):
        ct = bytearray(clients[victim].inbox[dealer])
        ct[5] ^= 1
        clients[victim].inbox[dealer] = bytes(ct)

    total, server, clients = run_round(xs, SecAggParams(count=40, bits=16, context=b"t"), tamper=flip)
    assert clients[victim].refused == [dealer]
    assert np.array_equal(unwrap(total, 16), sum(xs.values()))      # the other shares still suffice


def test_a_tampered_revealed_share_is_refused_by_the_server():
    from thinwire.secagg.protocol import SecAggClient

    xs = _inputs(9, 40)
    orig = SecAggClient.unmask

    def lying_unmask(self, u2):
        out = orig(self, u2)
        if self.cid == min(xs):
            for r in out:
                r.share = r.share[:-1] + bytes([r.share[-1] ^ 1])
        return out

    SecAggClient.unmask = lying_unmask
    try:
        total, server, _ = run_round(xs, SecAggParams(count=40, bits=16, context=b"v"), drop_after_shares={max(xs)})
    finally:
        SecAggClient.unmask = orig
    assert server.refused_shares == len(xs) - 1                     # one per dealer the liar holds shares of
    assert np.array_equal(unwrap(total, 16), sum(v for c, v in xs.items() if c != max(xs)))


def test_the_server_never_holds_an_individual_input():
    xs = _inputs(10, 200, seed=5)
    _, server, _ = run_round(xs, SecAggParams(count=200, bits=32, context=b"s"), drop_after_shares={max(xs)})
    held = [v for v in vars(server).values()]
    arrays = [a for v in held for a in (v.values() if isinstance(v, dict) else [v]) if isinstance(a, np.ndarray)]
    assert arrays, "the server keeps the masked inputs"
    for x in xs.values():
        for a in arrays:
            assert not np.array_equal(unwrap(a, 32), x)
            assert abs(np.corrcoef(unwrap(a, 32).astype(float), x.astype(float))[0, 1]) < 0.3
    blobs = b"".join(b for v in held if isinstance(v, dict) for d in v.values()
                     for b in (d.values() if isinstance(d, dict) else [d]) if isinstance(b, bytes))
    for x in xs.values():
        assert pack_bits(wrap(x, 32), 32) not in blobs


# -- the codecs whose messages add ----------------------------------------------------------------------
def test_integer_codec_sum_decodes_once_and_is_unbiased():
    import torch
    from thinwire.secagg.quantize import IntegerCodec, modulus_bits

    d, n = 1000, 30
    g = torch.Generator().manual_seed(0)
    xs = [0.02 * torch.randn(d, generator=g) for _ in range(n)]
    codec = IntegerCodec(bits=4, ratio=2.0, clip=0.15, seed=7, round=3)
    qs = [codec.encode(x, client_seed=100 + i) for i, x in enumerate(xs)]
    assert all(np.abs(q).max() <= codec.levels for q in qs)
    k = modulus_bits(4, n)
    # through secure aggregation: the masked sum of the integers is their plain sum
    total, _, _ = run_round({i: q for i, q in enumerate(qs)}, SecAggParams(count=qs[0].size, bits=k, context=b"q"))
    assert np.array_equal(unwrap(total, k), sum(qs))
    est = codec.decode_sum(unwrap(total, k), d)
    blocks = codec.blocks(d)
    mask = torch.zeros(d, dtype=torch.bool)
    for s, m in blocks:
        mask[s:s + m] = True
    truth = torch.stack(xs).sum(0) * mask
    assert bool((est[~mask] == 0).all())
    # error variance per coordinate <= n s^2 / 4 (independent dithers; no clipping at this range)
    err = float(((est - truth)[mask] ** 2).mean())
    assert err <= n * codec.step ** 2 / 4 * 1.2
    # unbiased: averaging 40 independent dithers shrinks the error ~40x
    runs = [codec.decode_sum(sum(codec.encode(x, client_seed=1000 * r + i) for i, x in enumerate(xs)), d)
            for r in range(40)]
    mean_err = float(((torch.stack(runs).mean(0) - truth)[mask] ** 2).mean())
    assert mean_err < err / 10


def test_piecewise_rotation_is_orthogonal_without_padding():
    import torch
    from thinwire.secagg.quantize import modulus_bits, pieces, rotate_pieces, unrotate_pieces

    assert pieces(8906) == [8192, 512, 128, 64, 8, 2] and sum(pieces(8906)) == 8906
    x = torch.randn(8906, generator=torch.Generator().manual_seed(0))
    y = rotate_pieces(x, 5)
    assert y.numel() == 8906
    assert float(y.norm()) == pytest.approx(float(x.norm()), rel=1e-5)
    assert torch.allclose(unrotate_pieces(y, 5), x, atol=1e-5)
    # k bits hold every sum of n values in [-L, L]: 2 n L + 1 <= 2^k, and k - 1 bits would not
    for b, n in [(4, 100), (2, 100), (8, 10), (4, 1)]:
        L = (1 << (b - 1)) - 1
        k = modulus_bits(b, n)
        assert 2 * n * L + 1 <= 1 << k and (k == 2 or 2 * n * L + 1 > 1 << (k - 1))
