"""Error-feedback memories: exact bookkeeping, DEF(c=0) == EF bit for bit, state round trip."""
import pytest
import torch

from thinwire import compression as C
from thinwire.compression.feedback import make_memory
from thinwire.compression.randblock import block_slices, gather, scatter


SEGS = (40, 7, 81)
D = sum(SEGS)


def _grad(x, k):
    # gradient of 0.5*||A_k x - b_k||^2, different per worker
    g = torch.Generator().manual_seed(100 + k)
    a = torch.randn(D, generator=g) * 0.5 + 1
    b = torch.randn(D, generator=g)
    return a * (a * x - b)


def _train(kind, coeff, steps=40, workers=3, lr=0.1, mu=0.9):
    """All-reduce style loop: random blocks shared across workers, per-worker memories."""
    x = torch.zeros(D)
    mems = [make_memory(kind, coeff=coeff) for _ in range(workers)]
    moms = [torch.zeros(D) for _ in range(workers)]
    for t in range(steps):
        blocks = block_slices(SEGS, 8, C.Context(seed=5, round=t, shared=True))
        total = None
        for k, mem in enumerate(mems):
            moms[k] = mu * moms[k] + _grad(mem.eval_point(x), k)
            p = mem.message(moms[k], lr)
            v = gather(p, blocks)
            total = v if total is None else total + v
            mem.update_blocks(p, blocks)
        x = x - scatter(total / workers, blocks, D)
    return x, mems


def test_def_c0_equals_ef_bit_for_bit():
    x_ef, m_ef = _train("ef", 0.0)
    x_def, m_def = _train("def", 0.0)
    assert torch.equal(x_ef, x_def)
    for a, b in zip(m_ef, m_def):
        assert torch.equal(a.residual, b.residual)


def test_def_changes_eval_point_only():
    x_def, mems = _train("def", 0.3)
    mem = mems[0]
    assert torch.equal(mem.eval_point(x_def), x_def - 0.3 * mem.residual)
    assert torch.equal(mem.output_point(x_def), x_def)


def test_defa_trains_like_def_and_outputs_averaged_iterate():
    x_def, m_def = _train("def", 0.3)
    x_a, m_a = _train("defa", 0.3)
    assert torch.equal(x_def, x_a)
    ebar = sum(m.residual for m in m_a) / len(m_a)
    assert m_a[0].needs_error_average and not m_def[0].needs_error_average
    assert torch.equal(m_a[0].output_point(x_a, ebar), x_a - ebar)


def test_virtual_iterate_identity():
    """x_t - mean_k e_k evolves as plain SGD on the averaged messages (spec §7): with lr scaled
    messages, x_T - ebar_T == -lr * sum_t mean_k m_t^k."""
    lr, workers = 0.05, 3
    x = torch.zeros(D, dtype=torch.float64)
    mems = [make_memory("def", coeff=0.3) for _ in range(workers)]
    acc = torch.zeros(D, dtype=torch.float64)
    for t in range(30):
        blocks = block_slices(SEGS, 4, C.Context(seed=1, round=t, shared=True))
        total = 0
        for k, mem in enumerate(mems):
            m = _grad(mem.eval_point(x).float(), k).double()
            acc += m / workers
            p = mem.message(m, lr)
            total = total + gather(p, blocks)
            mem.update_blocks(p, blocks)
        x = x - scatter(total / workers, blocks, D)
    ebar = sum(m.residual for m in mems) / workers
    torch.testing.assert_close(x - ebar, -lr * acc, rtol=0, atol=1e-12)


@pytest.mark.parametrize("codec_spec", ["randblock:ratio=4", "topk:fraction=0.1", "eden:bits=2", "identity"])
def test_client_step_keeps_exact_residual(codec_spec):
    codec = C.from_spec(codec_spec)
    mem = make_memory("ef")
    m = torch.randn(512)
    ctx = C.Context(seed=2, client_id=1)
    enc, sent = mem.step(m, codec, ctx, lr=0.5)
    assert torch.equal(mem.residual + sent, 0.5 * m) or torch.allclose(mem.residual + sent, 0.5 * m, atol=1e-6)
    p2 = mem.message(m, lr=0.5)
    torch.testing.assert_close(p2, mem.residual + 0.5 * m)
    assert torch.equal(codec.decode(C.Encoded.from_bytes(enc.to_bytes()), ctx), sent)


def test_none_memory_keeps_nothing():
    mem = make_memory("none")
    _, sent = mem.step(torch.ones(64), C.get("randblock", ratio=4), C.Context(), lr=2.0)
    assert mem.residual is None and float(sent.sum()) == 2.0 * 16


def test_state_dict_roundtrip_continues_identically():
    codec = C.get("randblock", ratio=4)
    a = make_memory("defa", coeff=0.5)
    for t in range(3):
        a.step(torch.randn(100, generator=torch.Generator().manual_seed(t)), codec, C.Context(round=t))
    b = make_memory("defa")
    b.load_state_dict(a.state_dict())
    assert b.coeff == 0.5 and b.steps == 3 and torch.equal(a.residual, b.residual)
    m = torch.randn(100)
    _, s1 = a.step(m, codec, C.Context(round=9))
    _, s2 = b.step(m, codec, C.Context(round=9))
    assert torch.equal(s1, s2) and torch.equal(a.residual, b.residual)
    with pytest.raises(ValueError, match="kind"):
        make_memory("ef").load_state_dict(a.state_dict())


def test_bad_kind_and_coeff_and_shape():
    with pytest.raises(ValueError, match="allowed: none, ef, def, defa"):
        make_memory("sgd")
    with pytest.raises(ValueError, match="coeff"):
        make_memory("def", coeff=1.5)
    mem = make_memory("ef")
    mem.step(torch.ones(10), C.get("identity"))
    with pytest.raises(ValueError, match="shape"):
        mem.message(torch.ones(11))
