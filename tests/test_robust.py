"""Robust aggregation (issue 23): each rule against its definition on crafted inputs, the norm
bound, the memory bound, and the attack kind's messages."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from thinwire.config import RunConfig
from thinwire.errors import ConfigError
from thinwire.server.strategy import make_strategy
from thinwire.server.strategy.base import Result
from thinwire.server.strategy.norm_bound import NormBound, clip_to_norm
from thinwire.server.strategy.robust import (coordinate_median, krum_scores, krum_select, trim_count, trimmed_mean)
from thinwire.task import Task


def _cfg(**kw) -> RunConfig:
    base = dict(clients=20, per_round=7, rounds=2, server_momentum=0.0, progress=False)
    base.update(kw)
    return RunConfig(**base).validate()


def _result(cid: int, delta: torch.Tensor, n: int = 10) -> Result:
    return Result(client_id=cid, round=0, job=0, task=Task(kind="train", round=0, client_id=cid),
                  tensors={"delta": delta}, scalars={"num_samples": float(n), "train_loss": 1.0})


# -- the rules against their definitions ------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 6, 9])
def test_median_is_numpy_median_per_coordinate(n):
    rows = torch.randn(n, 300, generator=torch.Generator().manual_seed(n))
    got = coordinate_median(rows)
    want = np.median(rows.numpy().astype(np.float64), axis=0)
    assert np.allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_median_ignores_a_minority_of_huge_values():
    honest = torch.tensor([[1.0, -2.0], [2.0, -1.0], [3.0, 0.0]])
    evil = torch.full((2, 2), 1e30)
    assert torch.equal(coordinate_median(torch.cat([honest, evil])), torch.tensor([3.0, 0.0]))


@pytest.mark.parametrize("n,beta", [(10, 0.1), (10, 0.25), (7, 0.2), (5, 0.0), (4, 0.49)])
def test_trimmed_mean_is_scipy_trim_mean(n, beta):
    rows = torch.randn(n, 257, generator=torch.Generator().manual_seed(7 * n))
    got = trimmed_mean(rows, beta)
    want = stats.trim_mean(rows.numpy().astype(np.float64), beta, axis=0)
    assert np.allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_trimmed_mean_by_hand():
    # one coordinate: values 1..10 with 1000 as the attacker; beta 0.1 cuts one value at each end.
    col = torch.tensor([5., 1., 1000., 3., 2., 4., 6., 7., 8., 9.]).reshape(-1, 1)
    assert trim_count(10, 0.1) == 1
    assert float(trimmed_mean(col, 0.1)) == pytest.approx(sum(range(2, 10)) / 8)


def _krum_by_definition(rows: torch.Tensor, f: int) -> list[float]:
    n = rows.shape[0]
    out = []
    for i in range(n):
        d = sorted(float(((rows[i].double() - rows[j].double()) ** 2).sum()) for j in range(n) if j != i)
        out.append(sum(d[:n - f - 2]))
    return out


def test_krum_scores_match_the_definition():
    rows = torch.randn(9, 50, generator=torch.Generator().manual_seed(3))
    for f in (0, 1, 2, 3):
        got = krum_scores(rows, f).tolist()
        want = _krum_by_definition(rows, f)
        assert np.allclose(got, want, rtol=1e-9, atol=1e-9)


def test_krum_picks_inside_the_honest_cluster_and_multikrum_averages_m():
    g = torch.Generator().manual_seed(0)
    honest = 0.01 * torch.randn(7, 20, generator=g) + 1.0
    evil = torch.randn(2, 20, generator=g) * 100.0
    rows = torch.cat([honest, evil])
    scores = _krum_by_definition(rows, 2)
    assert krum_select(rows, f=2) == [int(np.argmin(scores))]
    assert krum_select(rows, f=2)[0] < 7
    three = krum_select(rows, f=2, m=3)
    assert three == sorted(range(9), key=lambda i: (scores[i], i))[:3] and all(i < 7 for i in three)


# -- the strategy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
def test_strategy_applies_the_rule_to_the_round(rule):
    cfg = _cfg(strategy=rule, trim_beta=0.2, krum_f=1, krum_m=2, server_lr=0.5)
    s = make_strategy(cfg)
    g = torch.Generator().manual_seed(1)
    glob = torch.randn(40, generator=g)
    rows = torch.randn(6, 40, generator=g)
    s.begin_round(0, glob)
    for i in range(6):
        s.accept(_result(i, rows[i].clone(), n=1 + 100 * i))     # sample counts must not weigh in
    new, metrics = s.finalize()
    if rule == "median":
        agg = torch.from_numpy(np.median(rows.double().numpy(), axis=0))
    elif rule == "trimmed-mean":
        agg = torch.from_numpy(stats.trim_mean(rows.double().numpy(), 0.2, axis=0))
    else:
        scores = _krum_by_definition(rows, 1)
        agg = rows[sorted(range(6), key=lambda i: scores[i])[:2]].double().mean(0)
    assert torch.allclose(new.double(), glob.double() + 0.5 * agg, atol=1e-5)
    assert metrics["aggregated"] == 6


def test_robust_buffer_is_full_at_the_selected_count():
    s = make_strategy(_cfg(strategy="median", per_round=2, overcommit=1.0))
    s.begin_round(0, torch.zeros(4))
    s.accept(_result(0, torch.ones(4)))
    s.accept(_result(1, torch.ones(4)))
    with pytest.raises(ValueError, match="already holds 2"):
        s.accept(_result(2, torch.ones(4)))


def test_robust_memory_budget_is_refused_with_the_field():
    s = make_strategy(_cfg(strategy="trimmed-mean", robust_memory_mb=1.0))   # 7 x 50,000 x 4 B = 1.3 MiB
    with pytest.raises(ConfigError, match="robust_memory_mb"):
        s.begin_round(0, torch.zeros(50_000))
    make_strategy(_cfg(strategy="trimmed-mean", robust_memory_mb=2.0)).begin_round(0, torch.zeros(50_000))


def test_config_refuses_bad_trust_values():
    with pytest.raises(ConfigError, match="trim_beta"):
        _cfg(strategy="trimmed-mean", trim_beta=0.5)
    with pytest.raises(ConfigError, match="krum_m"):
        _cfg(strategy="krum", krum_m=8)
    with pytest.raises(ConfigError, match="norm_bound_mode"):
        _cfg(norm_bound=1.0, norm_bound_mode="drop")


# -- norm bound ---------------------------------------------------------------------------------------
def test_clip_to_norm_keeps_direction_and_reaches_c():
    u = torch.tensor([3.0, 4.0])
    out, norm = clip_to_norm(u, 1.0)
    assert norm == pytest.approx(5.0)
    assert torch.allclose(out, torch.tensor([0.6, 0.8]))
    same, _ = clip_to_norm(u, 5.0)
    assert same is u


def test_fedavg_norm_bound_clip_and_reject_are_counted():
    glob = torch.zeros(2)
    honest, evil = torch.tensor([0.3, 0.4]), torch.tensor([3000.0, 4000.0])
    s = make_strategy(_cfg(strategy="fedavg", norm_bound=1.0, norm_bound_mode="clip"))
    s.begin_round(0, glob)
    s.accept(_result(0, honest.clone(), n=1))
    s.accept(_result(1, evil.clone(), n=1))
    new, m = s.finalize()
    assert torch.allclose(new, (honest + torch.tensor([0.6, 0.8])) / 2, atol=1e-6)
    assert (m["norm_clipped"], m["norm_rejected"]) == (1, 0)

    s = make_strategy(_cfg(strategy="fedavg", norm_bound=1.0, norm_bound_mode="reject"))
    s.begin_round(0, glob)
    s.accept(_result(0, honest.clone(), n=1))
    with pytest.raises(ValueError, match="norm bound"):
        s.accept(_result(1, evil.clone(), n=1))
    new, m = s.finalize()
    assert torch.allclose(new, honest, atol=1e-6)
    assert (m["norm_clipped"], m["norm_rejected"], m["aggregated"]) == (0, 1, 1)


def test_norm_bound_refuses_non_finite():
    b = NormBound(1.0, "clip")
    with pytest.raises(ValueError, match="NaN"):
        b.apply(torch.tensor([math.nan, 0.0]))
    assert b.rejected == 1


# -- attack simulation ------------------------------------------------------------------------------
def test_attackers_are_a_seeded_fraction_and_get_the_attack_kind():
    from thinwire.client.kinds.attack import malicious_clients
    cfg = _cfg(clients=100, attack="scale", attack_fraction=0.1, attack_scale=1e3)
    evil = malicious_clients(cfg.seed, 100, 0.1)
    assert len(evil) == 10 and evil == malicious_clients(cfg.seed, 100, 0.1)
    assert evil != malicious_clients(cfg.seed + 1, 100, 0.1)
    s = make_strategy(cfg)
    kinds = {c: s.configure_client(0, c) for c in range(100)}
    assert {c for c, t in kinds.items() if t.kind == "attack"} == set(evil)
    t = kinds[min(evil)]
    assert t.params["attack"] == "scale" and t.params["attack_scale"] == 1e3 and "lr" in t.params
    assert all(kinds[c].kind == "train" for c in set(range(100)) - evil)


def test_attack_messages():
    from thinwire.client.kinds.attack import corrupt
    d = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupt(d, "scale", 1e3, 1), d * 1e3)
    assert torch.equal(corrupt(d, "sign_flip", 2.0, 1), -2.0 * d)
    z = corrupt(d, "noise", 3.0, 1)
    rms = float(d.pow(2).mean().sqrt())
    # std of 10,000 draws: relative standard error ~ 1 / sqrt(2 x 10^4) = 0.7 %; allow 5 sigma
    assert float(z.std()) == pytest.approx(3.0 * rms, rel=0.035)
    assert abs(float(torch.corrcoef(torch.stack([z, d]))[0, 1])) < 5 / math.sqrt(10_000)
    assert torch.equal(corrupt(d, "label_flip", 5.0, 1), d)


def _kind_delta(kind: str, y_map=lambda y: y, **params):
    from torch import nn
    from thinwire.client.kinds import ClientContext, get_kind
    from thinwire.training import model_spec
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    glob = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    data = type("D", (), {"num_classes": 3})()
    ctx = ClientContext(model=model, spec=model_spec(model), global_vec=glob, data=data, x=x, y=y_map(y), state={})
    task = Task(kind=kind, round=2, client_id=4, params={"lr": 0.1, "local_epochs": 1, "batch_size": 8, **params})
    return get_kind(kind)(ctx, task).tensors["delta"]


def test_attack_kind_corrupts_the_honest_training():
    honest = _kind_delta("train")
    torch.testing.assert_close(_kind_delta("attack", attack="scale", attack_scale=1e3), honest * 1e3)
    flipped = _kind_delta("train", y_map=lambda y: 2 - y)      # honest training on labels c -> 2 - c
    torch.testing.assert_close(_kind_delta("attack", attack="label_flip", attack_scale=1.0), flipped)
    assert (flipped - honest).abs().max() > 1e-3
