"""Random block sparsification: exact kept counts, exact residual split, shared seeds, wire form."""
import math

import pytest
import torch

from thinwire import compression as C
from thinwire.compression.randblock import block_slices, gather, kept_count, scatter


@pytest.mark.parametrize("ratio", [1, 1.5, 7, 64, 1000.0])
def test_kept_count_per_tensor_and_exact_split(ratio):
    segs = (1, 5, 64, 1000, 4097)
    x = torch.randn(sum(segs), generator=torch.Generator().manual_seed(0))
    ctx = C.Context(seed=3, round=2, segments=segs, shared=True)
    blocks = block_slices(segs, ratio, ctx)
    # every tensor keeps exactly max(1, floor(numel/ratio)) of its own elements
    base = 0
    for n in segs:
        inside = sum(l for s, l in blocks if base <= s < base + n)
        assert all(s + l <= base + n for s, l in blocks if base <= s < base + n)
        assert inside == max(1, math.floor(n / ratio))
        base += n
    codec = C.get("randblock", ratio=ratio)
    cx = codec.decode(codec.encode(x, ctx), ctx)
    residual = x.clone()
    for s, l in blocks:
        residual[s:s + l] = 0
    assert torch.equal(cx + residual, x)  # exact, no rounding anywhere
    assert int((cx != 0).sum()) == kept_count(blocks)


def test_blocks_wrap_and_shared_seed_agreement():
    segs = (10,) * 200
    a = block_slices(segs, 3, C.Context(seed=1, client_id=0, shared=True))
    b = block_slices(segs, 3, C.Context(seed=1, client_id=7, shared=True))
    c = block_slices(segs, 3, C.Context(seed=1, client_id=7, shared=False))
    assert a == b and a != c
    assert len(a) > len(segs)  # some blocks wrapped into two slices


def test_every_coordinate_selected_with_prob_one_over_ratio():
    n, ratio, rounds = 50, 5, 4000
    hits = torch.zeros(n)
    for r in range(rounds):
        for s, l in block_slices((n,), ratio, C.Context(seed=0, round=r, shared=True)):
            hits[s:s + l] += 1
    p = 1 / ratio
    se = math.sqrt(p * (1 - p) / rounds)  # coordinates are not independent but each is Bernoulli(p)
    assert float((hits / rounds - p).abs().max()) < 5 * se


def test_gather_scatter_roundtrip():
    segs = (300, 17, 2048)
    ctx = C.Context(seed=9, segments=segs, shared=True)
    xs = [torch.randn(sum(segs), generator=torch.Generator().manual_seed(0))]
    blocks = block_slices(segs, 8, ctx)
    v = gather(xs[0], blocks)
    assert v.numel() == kept_count(blocks)
    assert torch.equal(gather(scatter(v, blocks, sum(segs)), blocks), v)


def test_wire_bytes_values_only_and_bytes_roundtrip():
    x = torch.randn(4096)
    ctx = C.Context(seed=1)
    codec = C.from_spec("randblock:ratio=16")
    enc = codec.encode(x, ctx)
    assert enc.body_size == 4 * 256
    back = C.Encoded.from_bytes(enc.to_bytes())
    assert torch.equal(codec.decode(back, ctx), codec.decode(enc, ctx))


@pytest.mark.parametrize("bad", [0, 0.5, -1, float("nan"), float("inf"), "x"])
def test_bad_ratio(bad):
    with pytest.raises(ValueError, match="ratio"):
        C.get("randblock", ratio=bad)


def test_bad_input():
    codec = C.get("randblock", ratio=4)
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="segments"):
        codec.encode(torch.zeros(10), C.Context(segments=(3, 3)))
