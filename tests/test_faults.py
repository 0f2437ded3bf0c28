"""The fault and network model's statistics match their parameters within sampling error."""
import math

import numpy as np
import pytest

from thinwire.errors import ConfigError
from thinwire.faults.network import MOBILE_TIERS, NetworkModel, chunk_ranges
from thinwire.faults.stragglers import two_state_path


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True, excluding a run cut off at either end."""
    runs, n = [], 0
    for i, v in enumerate(mask):
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if mask[0] and runs:
        runs.pop(0)
    return runs


def test_iid_chunk_loss_rate_within_sampling_error():
    p, n = 0.1, 200
    net = NetworkModel(seed=3, loss="iid", loss_prob=p)
    lost = np.concatenate([net.lost_chunks(k, 0, n) for k in range(200)])
    se = math.sqrt(p * (1 - p) / lost.size)
    assert abs(lost.mean() - p) < 4 * se


def test_gilbert_path_share_and_burst_length():
    rng = np.random.default_rng(0)
    p, burst = 0.2, 6.0
    path = two_state_path(rng, 200_000, p, burst)
    runs = _runs(path)
    # Bad runs are geometric(1/burst); the share's standard error is inflated by the correlation
    # (renewal process): var ≈ p(1-p) * (2*burst - 1) / n for the mean of a two-state chain.
    se = math.sqrt(p * (1 - p) * (2 * burst) / path.size)
    assert abs(path.mean() - p) < 4 * se
    se_len = math.sqrt(burst * (burst - 1)) / math.sqrt(len(runs))
    assert abs(np.mean(runs) - burst) < 4 * se_len


def test_gilbert_chunk_loss_mean_rate():
    p = 0.15
    net = NetworkModel(seed=1, loss="gilbert", loss_prob=p, loss_burst=4.0)
    rates = np.array([net.lost_chunks(k, 0, 100).mean() for k in range(400)])
    se = rates.std(ddof=1) / math.sqrt(len(rates))
    assert abs(rates.mean() - p) < 4 * se


def test_iid_stragglers_rate():
    p = 0.2
    net = NetworkModel(seed=2, stragglers="iid", straggler_prob=p, straggler_slowdown=7.0)
    f = np.array([net.straggler_factor(k, r) for k in range(100) for r in range(50)])
    assert set(np.unique(f)) <= {1.0, 7.0}
    se = math.sqrt(p * (1 - p) / f.size)
    assert abs((f > 1).mean() - p) < 4 * se


def test_gilbert_stragglers_are_bursty_over_rounds():
    p, burst = 0.2, 5.0
    net = NetworkModel(seed=4, stragglers="gilbert", straggler_prob=p, straggler_burst=burst)
    rounds = 300
    share = []
    runs = []
    for k in range(60):
        path = np.array([net.straggler_factor(k, r) > 1 for r in range(rounds)])
        share.append(path.mean())
        runs += _runs(path)
    share = np.array(share)
    se = share.std(ddof=1) / math.sqrt(len(share))
    assert abs(share.mean() - p) < 4 * se
    assert abs(np.mean(runs) - burst) < 4 * math.sqrt(burst * (burst - 1) / len(runs))
    # bursty: P(straggle at r+1 | straggle at r) = 1 - 1/burst, far above the iid model's p
    iid = NetworkModel(seed=4, stragglers="iid", straggler_prob=p)

    def stay(model):
        pairs = [(model.straggler_factor(k, r) > 1, model.straggler_factor(k, r + 1) > 1)
                 for k in range(60) for r in range(rounds - 1)]
        after = [b for a, b in pairs if a]
        return float(np.mean(after)), len(after)

    g_stay, n_g = stay(net)
    i_stay, n_i = stay(iid)
    assert abs(g_stay - (1 - 1 / burst)) < 4 * math.sqrt(0.2 * 0.8 * (2 * burst) / n_g)
    assert abs(i_stay - p) < 4 * math.sqrt(p * (1 - p) / n_i)


def test_profiles_follow_their_distributions():
    net = NetworkModel(seed=0, profile="uniform", bandwidth_mbps=10, latency_ms=50)
    profs = [net.profile(k) for k in range(2000)]
    speeds = np.array([p.speed for p in profs])
    assert speeds.min() >= 0.5 and speeds.max() <= 1.5
    assert abs(speeds.mean() - 1.0) < 4 * math.sqrt(1 / 12 / len(speeds))
    assert all(p.down_bps == pytest.approx(4 * p.up_bps) for p in profs)
    mobile = NetworkModel(seed=0, profile="mobile")
    tiers = [mobile.profile(k).tier for k in range(4000)]
    for name, share, *_ in MOBILE_TIERS:
        frac = tiers.count(name) / len(tiers)
        assert abs(frac - share) < 4 * math.sqrt(share * (1 - share) / len(tiers))


def test_transfer_arithmetic_without_loss():
    net = NetworkModel(seed=0, profile="datacenter", chunk_size=1000)
    t = net.upload(5, 0, 10_000, header_bytes=100)
    prof = net.profile(5)
    assert t.time_s == pytest.approx(prof.latency_s + 10_000 * 8 / prof.up_bps)
    assert t.wire_bytes == 10_000 and t.n_chunks == 10 and not t.lost_chunks


def test_retransmit_costs_time_and_bytes_holes_do_not():
    kw = dict(seed=0, profile="uniform", loss="iid", loss_prob=0.3, chunk_size=1000)
    rt = NetworkModel(**kw, loss_policy="retransmit")
    ho = NetworkModel(**kw, loss_policy="holes")
    clean = NetworkModel(seed=0, profile="uniform", chunk_size=1000)
    a, b, c = rt.upload(1, 2, 50_000), ho.upload(1, 2, 50_000), clean.upload(1, 2, 50_000)
    # 50 chunks, each lost with p = 0.3 on the first attempt: Binomial(50, 0.3), mean 15, sd 3.24;
    # the holes model draws the same first attempt (same seed), retransmit resends every loss once
    # per loss and may lose resends too, so it drops at least as many.
    n_chunks, p = 50, 0.3
    sd = math.sqrt(n_chunks * p * (1 - p))
    assert abs(b.dropped_chunks - n_chunks * p) <= 4 * sd, b.dropped_chunks
    assert a.dropped_chunks >= b.dropped_chunks and a.retransmitted_chunks == a.dropped_chunks
    assert not a.lost_chunks
    assert a.time_s > c.time_s and a.wire_bytes > c.wire_bytes
    assert a.wire_bytes - 50_000 == sum(e - s for s, e in chunk_ranges(50_000, 1000)[:1]) * a.retransmitted_chunks
    assert b.time_s == pytest.approx(c.time_s) and b.wire_bytes == 50_000
    assert len(b.lost_chunks) == b.dropped_chunks
    holes = ho.holes(b)
    assert all(e - s == 1000 for s, e in holes)


def test_compute_time_scales_with_speed_and_straggling():
    net = NetworkModel(seed=0, compute_per_sample=0.01, stragglers="iid", straggler_prob=1.0, straggler_slowdown=3)
    p = net.profile(7)
    assert net.compute_time(7, 0, 100) == pytest.approx(100 * 0.01 / p.speed * 3)


def test_trace_profiles_and_errors(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("client_id,speed,up_mbps,down_mbps,latency_ms\n0,2.0,1.0,4.0,10\n1,0.5,8,16,100\n")
    net = NetworkModel(profile="trace", trace=str(f))
    assert net.profile(2).speed == 2.0 and net.profile(1).up_bps == 8e6  # wraps around
    bad = tmp_path / "bad.csv"
    bad.write_text("client_id,speed\n0,1\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        NetworkModel(profile="trace", trace=str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        NetworkModel(profile="trace", trace=str(tmp_path / "missing.csv"))
    st = tmp_path / "s.csv"
    st.write_text("client_id,round,slowdown\n3,4,6.5\n")
    net = NetworkModel(stragglers="trace", straggler_trace=str(st))
    assert net.straggler_factor(3, 4) == 6.5 and net.straggler_factor(3, 5) == 1.0
