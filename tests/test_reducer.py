"""The Reducer's plans in one process: the right collective per codec, exact means and byte counts."""
from __future__ import annotations

import pytest
import torch

from thinwire.compression import Context, eden_mean_of, from_spec, get
from thinwire.compression.randblock import block_slices, kept_count
from thinwire.errors import ConfigError
from thinwire.collective.reducer import Reducer, bucket_seed, simulate_mean


def _vecs(k=3, d=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=g) for _ in range(k)]


def test_identity_is_a_dense_all_reduce_mean():
    r = Reducer("identity")
    ps = _vecs()
    out = simulate_mean(r, ps, step=0)
    assert r.plan.collective == "all_reduce"
    assert torch.allclose(out[0].mean, torch.stack(ps).mean(0), atol=1e-6)
    assert out[0].payload_bytes == 4000 and out[0].wire_bytes == pytest.approx(2 * 2 / 3 * 4000)


def test_randblock_all_reduces_only_the_shared_blocks():
    segs = (600, 300, 100)
    r = Reducer("randblock:ratio=10", seed=4)
    ps = _vecs()
    out = simulate_mean(r, ps, step=3, bucket=0, segments=segs)
    blocks = block_slices(segs, 10, Context(seed=4, round=3, shared=True))
    assert out[0].payload_bytes == 4 * kept_count(blocks) == 4 * 100
    mask = torch.zeros(1000, dtype=torch.bool)
    for s, n in blocks:
        mask[s:s + n] = True
    want = torch.stack(ps).mean(0) * mask
    assert torch.allclose(out[1].mean, want, atol=1e-6)
    for p, o in zip(ps, out):
        assert torch.equal(o.local, p * mask)
    # another bucket draws other blocks; bucket 0 keeps the plain seed
    assert bucket_seed(4, 0) == 4 and bucket_seed(4, 1) != 4


def test_eden_all_gathers_and_matches_the_rotated_domain_mean():
    r = Reducer("eden:bits=2", seed=1)
    ps = _vecs(d=1024)
    out = simulate_mean(r, ps, step=5)
    assert r.plan.collective == "all_gather"
    codec = get("eden", bits=2)
    ctx = Context(seed=1, round=5, shared=True)
    encs = [codec.encode(p, ctx) for p in ps]
    assert torch.allclose(out[0].mean, eden_mean_of(encs), atol=1e-6)
    assert out[0].payload_bytes == 1024 * 2 // 8 + 4  # codes + one float32 scale, nothing else
    assert torch.allclose(out[2].local, codec.decode(encs[2], ctx), atol=1e-6)


@pytest.mark.parametrize("spec", ["topk:fraction=0.1", "randk:fraction=0.1", "qsgd:levels=4", "fp16"])
def test_other_codecs_all_gather_serialised_payloads(spec):
    r = Reducer(spec, seed=2)
    ps = _vecs()
    out = simulate_mean(r, ps, step=1)
    codec = from_spec(spec)
    ctxs = [Context(seed=2, round=1, client_id=k) for k in range(3)]
    encs = [codec.encode(p, c) for p, c in zip(ps, ctxs)]
    want = torch.stack([codec.decode(e, c) for e, c in zip(encs, ctxs)]).mean(0)
    assert torch.allclose(out[0].mean, want, atol=1e-6)
    assert out[0].payload_bytes == max(e.nbytes for e in encs) + 8
    assert out[0].wire_bytes == 2 * out[0].payload_bytes


def test_bad_codec_is_a_config_error():
    with pytest.raises(ConfigError, match="^codec: "):
        Reducer("zip:level=9")
