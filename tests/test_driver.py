"""Round policy (over-commit selection) and the FedAvg / FedAvgM folding rules."""
import pytest

from thinwire.server.driver import RoundPolicy
from thinwire.server.strategy import FedAvg, FedAvgM

import torch


def test_overcommit_selects_ceil_and_is_seeded():
    p = RoundPolicy(clients=100, per_round=10, overcommit=1.3, seed=1)
    s = p.select(0)
    assert len(s) == 13 and len(set(s)) == 13 and all(0 <= c < 100 for c in s)
    assert s == RoundPolicy(clients=100, per_round=10, overcommit=1.3, seed=1).select(0)
    assert s != p.select(1)
    assert len(RoundPolicy(clients=12, per_round=10, overcommit=1.5).select(0)) == 12
    assert set(p.select(0, candidates=[3, 5, 7])) == {3, 5, 7}


def test_min_clients():
    p = RoundPolicy(clients=10, per_round=2, deadline=5.0, min_clients=2)
    assert not p.enough(1) and p.enough(2)


def test_fedavg_is_sample_weighted_with_server_lr_and_momentum():
    g = torch.zeros(3)
    s = FedAvgM(server_lr=0.5, server_momentum=0.9)
    s.begin_round(0, g)
    s.fold(torch.tensor([1.0, 0, 0]), 1)
    s.fold(torch.tensor([0, 4.0, 0]), 3)
    new, m = s.finalize()
    avg = torch.tensor([0.25, 3.0, 0])
    assert torch.allclose(new, 0.5 * avg) and m["aggregated"] == 2
    s.begin_round(1, new)
    s.fold(avg, 1)
    new2, _ = s.finalize()
    assert torch.allclose(new2, new + 0.5 * (0.9 * avg + avg))
    s.begin_round(2, new2)
    with pytest.raises(ValueError, match="shape"):
        s.fold(torch.zeros(4), 1)
    same, m = s.finalize()
    assert torch.equal(same, new2) and m["aggregated"] == 0


def test_fedavg_float32_sum_is_accurate_and_cannot_overflow():
    g = torch.Generator().manual_seed(0)
    s = FedAvg()
    s.begin_round(0, torch.zeros(1000))
    ups = [torch.randn(1000, generator=g) for _ in range(200)]
    ws = [int(w) for w in torch.randint(1, 600, (200,), generator=g)]
    for i, (u, w) in enumerate(zip(ups, ws)):
        s.fold(u, w)
    new, _ = s.finalize()
    ref = sum(w * u.double() for u, w in zip(ups, ws)) / sum(ws)
    # float32 summation of n terms: relative error <= n * eps32 of the sum of |terms| (worst case)
    bound = len(ups) * torch.finfo(torch.float32).eps * (sum(w * u.double().abs() for u, w in zip(ups, ws)) / sum(ws))
    assert torch.all((new.double() - ref).abs() <= bound)
    # an update that could overflow the float32 sum is refused before anything is added
    s.begin_round(1, torch.zeros(3))
    s.fold(torch.tensor([1.0, -2.0, 3.0]), 10)
    for bad in (torch.tensor([3e38, 0.0, 0.0]), torch.tensor([1.0, float("nan"), 0.0]), torch.tensor([float("-inf"), 0, 0])):
        with pytest.raises(ValueError, match="overflow|NaN"):
            s.fold(bad, 2)
    s.fold(torch.tensor([1.0, 1.0, 1.0]), 10)
    new, m = s.finalize()
    assert torch.allclose(new, torch.tensor([1.0, -0.5, 2.0])) and m["aggregated"] == 2
    # the sum's buffer is reused across rounds, and momentum never aliases it
    m = FedAvgM(server_momentum=0.9)
    m.begin_round(0, torch.zeros(2))
    m.fold(torch.ones(2), 1)
    m.finalize()
    v = m.velocity.clone()
    m.begin_round(1, torch.zeros(2))
    assert torch.equal(m.velocity, v)
