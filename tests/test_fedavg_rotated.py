"""FedAvg folding EDEN payloads with a shared per-round rotation in the rotated domain (issue 21):
aggregate-then-decode equals decode-then-average, bit-identical for any arrival order, one
inverse transform per round; mixed layouts fall back to decoding."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from thinwire.compression.eden import Eden, rotated_flat
from thinwire.server.strategy.base import Result
from thinwire.server.strategy.fedavg import FedAvg

from thinwire import compression as C
from thinwire.task import DEFAULT_TENSOR, Task, decode_result_split, pack_result

U = 2.0 ** -24                         # float32 unit roundoff
GROUPS, M = 4, 64                      # the FWHT: <= 4 dense stages of <= 64-point Hadamard blocks (d <= 2^24)


def _payloads(d=5000, n=5, rnd=3, bits=(2, 3, 1, 4, 2), rotation="shared"):
    g = torch.Generator().manual_seed(d + rnd)
    xs = [torch.randn(d, generator=g) * (1 + i) for i in range(n)]
    encs = [C.from_spec(f"eden:bits={bits[i % len(bits)]},rotation={rotation}")
            .encode(x, C.Context(seed=7, round=rnd, client_id=i)) for i, x in enumerate(xs)]
    return [C.Encoded.from_bytes(e.to_bytes()) for e in encs]


def _result(enc, cid, w, rnd=3):
    task = Task(kind="train", round=rnd, client_id=cid, seed=7, codec="eden")
    return Result(client_id=cid, round=rnd, job=rnd, task=task, tensors={}, scalars={"num_samples": w},
                  encoded={DEFAULT_TENSOR: enc})


def _fold(encs, ws, order, d):
    s = FedAvg(server_lr=1.0)
    s.begin_round(3, torch.zeros(d))
    for i in order:
        s.accept(_result(encs[i], i, ws[i]))
    return s.finalize()


def test_aggregate_then_decode_equals_decode_then_average():
    d = 5000
    encs, ws = _payloads(d), [3, 10, 1, 7, 4]
    assert len({int(e.meta["seed"]) for e in encs}) == 1 and all(e.meta["shared"] for e in encs)
    fast, metrics = _fold(encs, ws, range(5), d)
    assert metrics["aggregated"] == 5
    W = sum(ws)
    decoded = [Eden().decode(e).double() for e in encs]
    slow = sum(w * x for w, x in zip(ws, decoded)) / W
    # Error budget (derived): each path runs float32 FWHTs; a stage of m-point dense Hadamard
    # blocks errs by <= gamma_m * m^0.5 relative in 2-norm (|H_m| has norm m, H_m/sqrt(m) is
    # orthonormal), so the transform by <= GROUPS * M^1.5 * u; the exact sum rounds to 2^-32 per
    # coordinate and its float32 mean by u relative.
    r_norms = [float(rotated_flat(e).double().norm()) for e in encs]
    scale = sum(w * r for w, r in zip(ws, r_norms)) / W
    bound = 2 * GROUPS * M ** 1.5 * U * scale + math.sqrt(d) * 2.0 ** -32 + U * scale
    err = float((fast.double() - slow).norm())
    assert err <= bound, (err, bound)
    # and the rotated path really did skip the per-client transforms: same answer as mean_of's
    ref = C.eden.mean_of(encs, weights=[float(w) for w in ws]).double()
    assert float((fast.double() - ref).norm()) <= bound


def test_bit_identical_for_any_arrival_order():
    d = 3000
    encs, ws = _payloads(d), [3, 10, 1, 7, 4]
    ref = _fold(encs, ws, range(5), d)[0]
    for order in itertools.islice(itertools.permutations(range(5)), 1, None, 17):
        assert torch.equal(_fold(encs, ws, order, d)[0], ref)


def test_other_layouts_and_plain_results_mix_exactly_weighted():
    d = 4096
    shared = _payloads(d, n=3)
    other = C.from_spec("eden:bits=2,rotation=shared,max_chunk=1024").encode(
        torch.randn(d, generator=torch.Generator().manual_seed(5)), C.Context(seed=7, round=3, client_id=9))
    plain = torch.randn(d, generator=torch.Generator().manual_seed(6))
    s = FedAvg(server_lr=1.0)
    s.begin_round(3, torch.zeros(d))
    for i, e in enumerate(shared):
        s.accept(_result(e, i, 2))
    s.accept(_result(other, 9, 3))                            # another chunking: decoded, plain sum
    s.accept(Result(client_id=10, round=3, job=3, task=_result(shared[0], 10, 1).task,
                    tensors={DEFAULT_TENSOR: plain}, scalars={"num_samples": 5}))
    got, metrics = s.finalize()
    assert metrics["aggregated"] == 5
    exp = (2 * sum(Eden().decode(e).double() for e in shared) + 3 * Eden().decode(other).double()
           + 5 * plain.double()) / 14
    assert float((got.double() - exp).abs().max()) <= 1e-4 * float(exp.abs().max())


def test_folds_encoded_only_shared_eden_and_server_decode_split():
    d = 2048
    s = FedAvg(server_lr=1.0)
    shared, = _payloads(d, n=1)
    private, = _payloads(d, n=1, rotation="client")
    assert s.folds_encoded(DEFAULT_TENSOR, shared) and not s.folds_encoded(DEFAULT_TENSOR, private)
    assert not s.folds_encoded("other", shared)
    task = Task(kind="train", round=3, client_id=0, seed=7, codec="eden")
    for enc, kept in ((shared, True), (private, False)):
        tensors, encoded = decode_result_split(pack_result({DEFAULT_TENSOR: (enc, (d,), True)}).to_bytes(), task, None,
                                               keep_encoded=s.folds_encoded)
        assert (DEFAULT_TENSOR in encoded) == kept and (DEFAULT_TENSOR in tensors) != kept
    with pytest.raises(ValueError, match="^rotation:"):
        C.from_spec("eden:bits=2,rotation=round")
    s.begin_round(3, torch.zeros(d + 1))
    with pytest.raises(ValueError, match="^update:"):
        s.accept(_result(shared, 0, 1))


@pytest.mark.parametrize("strategy,extra", [("fedbuff", {"per_round": 2, "concurrency": 2, "buffer_size": 2}),
                                            ("dp-fedavg", {"per_round": 2}), ("trimmed-mean", {"per_round": 4}),
                                            ("fedavg", {"per_round": 2, "norm_bound": 5.0})])
def test_strategies_that_see_each_update_fold_decoded_deltas_under_a_shared_rotation(strategy, extra):
    """With rotation=shared in the run's codec, a strategy that clips, buffers or inspects each update
    is never handed encoded payloads, and it folds decoded ones (its plain sum exists)."""
    from thinwire.config import RunConfig, build
    from thinwire.server.strategy import make_strategy

    cfg = build(RunConfig, {"clients": 4, "strategy": strategy, "codec": "eden:bits=2,rotation=shared",
                            "deadline": 0, **extra})
    s = make_strategy(cfg)
    d = 64
    shared, = _payloads(d, n=1)
    assert not s.folds_encoded(DEFAULT_TENSOR, shared)
    s.begin_round(0, torch.zeros(d))
    delta = torch.full((d,), 0.01)
    task = Task(kind="train", round=0, client_id=0, seed=7, codec="eden")
    for cid in range(cfg.per_round):
        s.accept(Result(client_id=cid, round=0, job=0, task=task, tensors={DEFAULT_TENSOR: delta},
                        scalars={"num_samples": 1}))
    new, _ = s.finalize()
    assert new.shape == (d,) and torch.isfinite(new).all() and not torch.equal(new, torch.zeros(d))
