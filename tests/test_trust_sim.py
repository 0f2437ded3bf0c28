"""Trust strategies through the simulation engine on a real local Ray (issue 23): DP-FedAvg writes
(epsilon, delta) into every metrics row and the summary, equal to the accountant's; a robust rule
with a norm bound and attackers runs, resumes, and refuses what the bound says."""
import json
import math

import pytest

from thinwire.client.kinds.attack import malicious_clients
from thinwire.config import RunConfig, build
from thinwire.server.strategy.dp import PrivacyAccountant
from thinwire.sim.engine import simulate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _cfg(tmp_path, **kw):
    base = dict(clients=40, per_round=8, rounds=3, local_epochs=1, progress=False, out_dir=str(tmp_path),
                name="run", workers=1)
    base.update(kw)
    return build(RunConfig, base)


def test_dp_fedavg_reports_epsilon_per_round_and_in_the_summary(tmp_path):
    res = simulate(_cfg(tmp_path, strategy="dp-fedavg", dp_noise=1.1, dp_clip=0.5, dp_delta=1e-5, dp_noise_seed=3))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        acc = PrivacyAccountant(8 / 40, 1.1, 1e-5)
        acc.step(r["round"] + 1)
        assert r["dp_epsilon"] == pytest.approx(acc.epsilon(), rel=1e-12)
        assert r["dp_delta"] == 1e-5 and r["dp_sampling"] == "poisson"
        assert r["accepted"] == r["selected"]                     # Poisson sample, all waited for
    assert res.summary["dp_epsilon"] == rows[-1]["dp_epsilon"] and res.summary["dp_delta"] == 1e-5
    # Poisson sampling, q = 8/40 of 40 clients, 3 rounds: selections ~ Binomial(120, 0.2) = 24 +- 4.4; 5 sd
    assert abs(sum(r["selected"] for r in rows) - 24) <= 5 * math.sqrt(120 * 0.2 * 0.8), [r["selected"] for r in rows]


def test_trimmed_mean_with_norm_bound_refuses_attackers_and_resumes(tmp_path):
    kw = dict(strategy="trimmed-mean", trim_beta=0.25, attack="scale", attack_fraction=0.25, attack_scale=1e3,
              norm_bound=2.0, norm_bound_mode="reject", rounds=2)
    simulate(_cfg(tmp_path, **kw))
    res = simulate(_cfg(tmp_path, **{**kw, "rounds": 3}), resume=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    evil = malicious_clients(0, 40, 0.25)
    for r in rows:
        assert not set(r["accepted_clients"]) & evil
        assert r["norm_rejected"] <= r["rejected_pushes"]
        # a scaled (x 1e3) update is far past the bound, an honest one within it: the bound refuses
        # exactly the selected attackers and every honest client is aggregated
        assert r["norm_rejected"] == r["selected"] - r["accepted"], r
        assert r["aggregated"] == r["accepted"] and r["trimmed_each_side"] == int(0.25 * r["accepted"])
    assert sum(r["norm_rejected"] for r in rows) > 0
    # a resumed run's summary covers the rounds it ran itself, like its other counters
    assert res.summary["norm_rejected"] == sum(r["norm_rejected"] for r in res.metrics)
