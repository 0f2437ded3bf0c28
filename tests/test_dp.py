"""Central DP (issue 23): the accountant against published values, and DP-FedAvg's round math
(clip, unweighted sum, noise z x C, fixed denominator, Poisson sampling)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thinwire.config import RunConfig
from thinwire.errors import ConfigError
from thinwire.server.strategy import make_strategy
from thinwire.server.strategy.base import Result
from thinwire.server.strategy.dp import PrivacyAccountant
from thinwire.task import Task


# -- the accountant -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,batch,z,epochs,delta,eps", [
    # tensorflow_privacy, privacy/analysis/compute_dp_sgd_privacy_lib_test.py, test_compute_dp_sgd_privacy:
    # (n, batch_size, noise_multiplier, epochs, delta) -> epsilon, Poisson sampling q = batch / n,
    # steps = epochs x n / batch.
    (60000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
    (100000, 100, 1.0, 30, 1e-7, 1.4154988495444845),
])
def test_accountant_matches_tensorflow_privacy_published_values(n, batch, z, epochs, delta, eps):
    acc = PrivacyAccountant(batch / n, z, delta)
    acc.step(int(math.ceil(epochs * n / batch)))
    assert acc.epsilon() == pytest.approx(eps, rel=1e-6)


def test_accountant_is_below_the_moments_accountant_of_abadi_et_al():
    # Abadi et al. 2016 (Deep Learning with Differential Privacy, sec. 3.1 / 5): q = 0.01, sigma = 4,
    # 100 epochs = 10,000 steps, delta = 1e-5: the moments accountant gives epsilon = 1.26 (strong
    # composition 9.34). RDP over the same orders can only be tighter, and not by an order of magnitude.
    acc = PrivacyAccountant(0.01, 4.0, 1e-5)
    acc.step(10_000)
    assert 0.5 * 1.26 < acc.epsilon() <= 1.26


def test_accountant_grows_with_rounds_and_is_state_only_the_count():
    a = PrivacyAccountant(0.1, 1.0, 1e-5)
    assert a.epsilon() == 0.0
    eps = []
    for _ in range(5):
        a.step()
        eps.append(a.epsilon())
    assert all(x < y for x, y in zip(eps, eps[1:]))
    b = PrivacyAccountant(0.1, 1.0, 1e-5)
    b.step(5)
    assert b.epsilon() == eps[-1]
    # the same as composing the event 5 times with the library's own accountant
    from dp_accounting.rdp import rdp_privacy_accountant
    lib = rdp_privacy_accountant.RdpAccountant()
    lib.compose(a.event, 5)
    assert lib.get_epsilon(1e-5) == pytest.approx(eps[-1], rel=1e-12)


# -- DP-FedAvg -----------------------------------------------------------------------------------------
def _cfg(**kw) -> RunConfig:
    base = dict(strategy="dp-fedavg", clients=100, per_round=4, rounds=3, server_momentum=0.0, dp_clip=1.0,
                dp_noise=0.0, dp_noise_seed=0, progress=False)
    base.update(kw)
    return RunConfig(**base).validate()


def _result(cid: int, delta: torch.Tensor, n: int) -> Result:
    return Result(client_id=cid, round=0, job=0, task=Task(kind="train", round=0, client_id=cid),
                  tensors={"delta": delta}, scalars={"num_samples": float(n)})


def test_dp_fedavg_clips_sums_unweighted_and_divides_by_the_expected_count():
    s = make_strategy(_cfg())
    glob = torch.zeros(3)
    ups = [torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.1, 0.0, 0.2]), torch.tensor([0.0, -12.0, 5.0])]
    s.begin_round(0, glob)
    for i, u in enumerate(ups):
        s.accept(_result(i, u.clone(), n=10 ** i))         # sample counts do not weigh
    new, m = s.finalize()
    clipped = [u * min(1.0, 1.0 / float(u.norm())) for u in ups]
    want = sum(clipped) / 4                                  # per_round = q x clients, not the 3 that came
    assert torch.allclose(new, want, atol=1e-6)
    assert m["dp_clipped"] == 2 and m["aggregated"] == 3
    assert m["dp_epsilon"] == math.inf and m["dp_sampling"] == "poisson"      # z = 0: no privacy


def test_dp_fedavg_noise_has_std_z_times_c_on_the_sum():
    z, c, d, k = 2.0, 0.5, 200_000, 4
    s = make_strategy(_cfg(dp_noise=z, dp_clip=c, per_round=k))
    s.begin_round(0, torch.zeros(d))
    new, m = s.finalize()                                    # no update: the step is noise / K
    # std of 200,000 draws: relative standard error 1 / sqrt(2 x 200,000) = 0.16 %; allow 5 sigma
    assert float(new.double().std()) == pytest.approx(z * c / k, rel=5 / math.sqrt(2 * d))
    assert abs(float(new.double().mean())) < 5 * z * c / k / math.sqrt(d)
    # epsilon is the accountant's after one round at q = K / clients, z, delta
    acc = PrivacyAccountant(k / 100, z, 1e-5)
    acc.step(1)
    assert m["dp_epsilon"] == pytest.approx(acc.epsilon(), rel=1e-12) and m["dp_delta"] == 1e-5


def test_dp_fedavg_samples_each_client_with_probability_q():
    s = make_strategy(_cfg(clients=1000, per_round=100))
    sizes = [len(s.select(r, list(range(1000)), None)) for r in range(200)]
    # Binomial(1000, 0.1): mean 100, std sqrt(90) = 9.5; the mean of 200 rounds within 5 std errors
    assert abs(np.mean(sizes) - 100) < 5 * math.sqrt(90 / 200)
    assert np.std(sizes) == pytest.approx(math.sqrt(90), rel=0.3)
    assert s.select(3, list(range(1000)), None) == s.select(3, list(range(1000)), None)    # seeded


def test_dp_fedavg_resumes_its_accountant():
    s = make_strategy(_cfg(dp_noise=1.0))
    for r in range(3):
        s.begin_round(r, torch.zeros(2))
        _, m = s.finalize()
    t = make_strategy(_cfg(dp_noise=1.0))
    t.load_state_dict(s.state_dict())
    assert t.accountant.rounds == 3 and t.accountant.epsilon() == m["dp_epsilon"]


def test_dp_fedavg_refuses_overcommit():
    with pytest.raises(ConfigError, match="overcommit"):
        make_strategy(_cfg(overcommit=1.3))
