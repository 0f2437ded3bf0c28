"""Sequential gradient coding: exact decoding, the paper's loads, and decoding within the delay T
under every straggler pattern the (B, W, lambda)-bursty model allows."""
import itertools
import math

import numpy as np
import pytest

from thinwire.faults.stragglers import (bursty_conforms, bursty_pattern, delay_profile, gilbert_pattern,
    load0_profile, pattern_conforms)
from thinwire.faults.traces import read_completion_trace, write_completion_trace
from thinwire.coding.matrices import (cyclic_matrix, decode_coefficients, fractional_matrix, gc_load,
    make_decoder, msgc_load, srsgc_load)
from thinwire.coding.runtime import search, simulate
from thinwire.coding.schemes import MSGC, SRSGC, layout_bounds, make_scheme, unit_segments


def _decode_rel_err(B: np.ndarray, rows, rng) -> float:
    n = B.shape[0]
    g = rng.standard_normal((n, 50))                     # partial gradients of the n partitions
    msgs = B @ g                                         # what the workers send
    a = decode_coefficients(B, np.asarray(rows))
    got = a @ msgs[list(rows)]
    full = g.sum(axis=0)
    return float(np.linalg.norm(got - full) / np.linalg.norm(full))


@pytest.mark.parametrize("n,s", [(6, 1), (7, 2), (8, 3), (9, 4)])
def test_cyclic_gc_decodes_from_every_arrival_set_small_n(n, s):
    rng = np.random.default_rng(0)
    B = cyclic_matrix(n, s, seed=3)
    for i in range(n):                                   # support is the cyclic window
        assert set(np.flatnonzero(np.abs(B[i]) > 0)) <= {(i + k) % n for k in range(s + 1)}
    for rows in itertools.combinations(range(n), n - s):
        assert _decode_rel_err(B, rows, rng) < 1e-5


def test_fractional_gc_decodes_from_every_arrival_set():
    rng = np.random.default_rng(1)
    n, s = 8, 3
    B = fractional_matrix(n, s)
    for rows in itertools.combinations(range(n), n - s):
        assert _decode_rel_err(B, rows, rng) < 1e-12
    with pytest.raises(ValueError, match="divide"):
        fractional_matrix(10, 3)


@pytest.mark.parametrize("s", [15, 27])
def test_cyclic_gc_n256_random_arrival_sets(s):
    rng = np.random.default_rng(2)
    n = 256
    B = cyclic_matrix(n, s, seed=0)
    for _ in range(6):
        rows = np.sort(rng.choice(n, n - s, replace=False))
        a = decode_coefficients(B, rows)                 # any n - s rows span the all-ones vector
        assert np.abs(a @ B[rows] - 1).max() < 1e-8
        assert _decode_rel_err(B, rows, rng) < 1e-5
    # One row fewer than n - s cannot decode in general: a random set of n - s - 1 rows fails.
    with pytest.raises(ValueError):
        decode_coefficients(B, np.sort(rng.choice(n, n - s - 1, replace=False)))


def test_decoder_caches_per_arrival_pattern_in_arrival_order():
    dec = make_decoder("cyclic", 10, 3, seed=1)
    rows = [9, 2, 5, 0, 7, 1, 3, 8]                      # arrival order; only the first 7 are used
    use, a = dec.coefficients(rows)
    assert use.tolist() == rows[:7] and dec.hits == 0
    use2, a2 = dec.coefficients(list(reversed(rows[:7])))
    assert dec.hits == 1 and np.allclose(a2, a[::-1])
    assert np.abs(a @ dec.B[use] - 1).max() < 1e-9


def test_loads_match_the_paper_table_n256():
    n = 256
    assert gc_load(n, 15) == pytest.approx(0.0625, abs=5e-7)
    assert srsgc_load(n, 2, 3, 23) == pytest.approx(0.050781, abs=5e-7)
    assert msgc_load(n, 1, 2, 27) == pytest.approx(0.007543, abs=5e-7)
    assert gc_load(n, 0) == pytest.approx(1 / 256)
    assert make_scheme("m-sgc", n, 10, B=1, W=2, lam=27).load == pytest.approx(56 / 7424)


def test_msgc_layout_minitasks_cost_the_same():
    sch = MSGC(256, 4, B=1, W=2, lam=27)
    bounds = layout_bounds(sch, 7424 * 2)
    d1 = np.diff(bounds[0])
    d2_per_row = 28 * np.diff(bounds[1])                 # a coded row covers lambda+1 partitions
    assert d1.min() == d1.max() == pytest.approx(d2_per_row.mean())
    segs = unit_segments(sch, bounds, 1, 5)
    assert len(segs) == 28 and all(b[0] < b[1] for b in segs)


def _longest_burst(pattern) -> int:
    """Most consecutive straggling rounds of any worker."""
    best = 0
    for row in pattern:
        run = 0
        for v in row:
            run = run + 1 if v else 0
            best = max(best, run)
    return best


def _run_pattern(sch, pattern):
    """Drive a scheme with a fixed straggler pattern; every round must be tolerated."""
    for r in range(pattern.shape[1]):
        plan = sch.plan(r)
        strag = pattern[:, r]
        assert sch.tolerable(r, plan, strag), f"round {r}: conforming pattern refused"
        for t in sch.record(plan, ~strag):
            assert t + sch.T >= r                        # decoded no later than its deadline
    return sch


@pytest.mark.parametrize("B,W,lam", [(1, 2, 3), (2, 3, 4), (1, 3, 5), (2, 5, 6), (3, 4, 5)])
def test_msgc_and_srsgc_decode_every_job_within_T_under_the_bursty_model(B, W, lam):
    n, J = 12, 40
    for seed in range(4):
        pat = bursty_pattern(n, J + B + W, B, W, lam, start_prob=0.5, seed=seed)
        assert pattern_conforms(pat, B, W, lam)
        # ... and reaches the model's limits (the schemes are tried at their design point, not on a
        # light pattern): some window of W rounds holds exactly lambda distinct stragglers and some
        # worker straggles B rounds in a row (conformance forbids more of either)
        assert max(int(pat[:, max(0, r - W + 1): r + 1].any(1).sum()) for r in range(pat.shape[1])) == lam
        assert _longest_burst(pat) == B
        m = _run_pattern(MSGC(n, J, B, W, lam), pat)
        assert len(m.decoded) == J and m.fallbacks == 0
        if (W - 1) % B == 0:
            s = _run_pattern(SRSGC(n, J, B, W, lam, exempt=False), pat)
            assert len(s.decoded) == J and s.fallbacks == 0


def test_adversarial_bursts_are_decoded_within_T():
    """Worst cases of the model: lambda workers straggling together in bursts of exactly B, as
    often as the window allows."""
    n, J = 10, 30
    for B, W, lam in [(1, 2, 4), (2, 3, 4), (2, 5, 5)]:
        pat = np.zeros((n, J + W + B), dtype=bool)
        for start in range(0, pat.shape[1], W + B - 1):   # a burst, then the W - 1 rounds it blocks
            group = (np.arange(lam) + start) % n
            pat[np.ix_(group, range(start, min(start + B, pat.shape[1])))] = True
        assert pattern_conforms(pat, B, W, lam)
        assert len(_run_pattern(MSGC(n, J, B, W, lam), pat).decoded) == J
        if (W - 1) % B == 0:
            assert len(_run_pattern(SRSGC(n, J, B, W, lam, exempt=False), pat).decoded) == J


def test_model_check_rejects_spatial_and_temporal_violations():
    past = np.zeros((6, 2), dtype=bool)
    past[0, 1] = True                                    # worker 0 straggled last round
    cur = np.zeros(6, dtype=bool)
    cur[0] = True
    assert not bursty_conforms(past, cur, B=1, W=3, lam=6)   # burst of 2 > B
    assert bursty_conforms(past, cur, B=2, W=3, lam=6)       # one burst of length 2: allowed
    past[0, 0] = True
    assert not bursty_conforms(past, cur, B=2, W=3, lam=6)   # burst of 3 > B
    past[0, :] = [True, False]
    assert not bursty_conforms(past, cur, B=2, W=3, lam=6)   # a second burst inside the window
    cur2 = np.zeros(6, dtype=bool)
    cur2[1:3] = True
    assert not bursty_conforms(past, cur2, B=1, W=3, lam=2)  # 3 distinct > lambda
    assert bursty_conforms(past, cur2, B=1, W=3, lam=3)


def test_gc_tolerates_s_and_waits_beyond():
    sch = make_scheme("gc", 8, 5, s=2)
    plan = sch.plan(0)
    strag = np.zeros(8, dtype=bool)
    strag[[1, 4]] = True
    assert sch.tolerable(0, plan, strag)
    strag[6] = True
    assert not sch.tolerable(0, plan, strag)
    assert not make_scheme("uncoded", 8, 5).tolerable(0, plan, strag)


def test_virtual_clock_runtime_and_waits():
    """Uncoded waits for the slowest every round; GC with s >= the most stragglers never waits
    and each round lasts min((1+mu) fastest, slowest) at its load."""
    n, J = 16, 20
    pat = gilbert_pattern(n, J + 5, 0.1, 2.0, seed=4)
    L0 = load0_profile(pat, seed=4)
    unc = simulate(make_scheme("uncoded", n, J), L0)
    d = delay_profile(L0, 1 / n)[:, :J]
    assert unc.runtime == pytest.approx(d.max(axis=0).sum())
    most = int((L0 > 2 * L0.min(axis=0)).sum(axis=0).max())
    gc = simulate(make_scheme("gc", n, J, s=min(most, n - 1)), L0)
    dg = delay_profile(L0, gc.load)[:, :J]
    assert gc.waits == 0
    assert gc.runtime == pytest.approx(np.minimum(2 * dg.min(axis=0), dg.max(axis=0)).sum())
    assert np.all(np.diff(gc.job_done_time) > 0)


def test_search_picks_the_best_simulated_parameters():
    n, J = 24, 12
    pat = gilbert_pattern(n, J + 6, 0.08, 1.5, seed=5)
    L0 = load0_profile(pat, seed=5)
    p, best = search("gc", L0, J)
    for s in range(0, 8):
        assert best.runtime <= simulate(make_scheme("gc", n, J, s=s), L0).runtime + 1e-9
    pm, bm = search("m-sgc", L0, J, max_delay=2)
    assert make_scheme("m-sgc", n, J, **pm).T <= 2
    assert bm.runtime <= simulate(make_scheme("m-sgc", n, J, B=1, W=2, lam=3), L0).runtime + 1e-9


def test_completion_trace_roundtrip(tmp_path):
    L0 = load0_profile(gilbert_pattern(5, 7, 0.2, 2.0, seed=1), seed=1)
    path = str(tmp_path / "t.csv")
    write_completion_trace(path, L0)
    assert np.array_equal(read_completion_trace(path), L0)


def test_gilbert_pattern_share_and_bursts():
    pat = gilbert_pattern(200, 400, 0.05, 3.0, seed=2)
    p = pat.mean()
    se = math.sqrt(0.05 * 0.95 * 6 / pat.size)
    assert abs(p - 0.05) < 5 * se
    starts = (pat[:, 1:] & ~pat[:, :-1]).sum()
    assert (pat[:, 1:].sum() / starts) == pytest.approx(3.0, rel=0.2)   # mean burst length


# -- SR-SGC: rounds GC alone absorbed are skipped by both model checks (docs/sgc.md) ----------------
def _hand_profile(strag_rounds: list[set], n: int) -> np.ndarray:
    """Load-0 times: 1.0 s, 3.0 s for a straggler. With mu = 1 and sec_per_load = 0 the cut is
    2.0 s, so a round lasts 1.0 (no straggler), 2.0 (stragglers tolerated) or 3.0 (a wait)."""
    L0 = np.ones((n, len(strag_rounds)))
    for r, ws in enumerate(strag_rounds):
        L0[sorted(ws), r] = 3.0
    return L0


def test_srsgc_round_by_round_on_a_hand_checked_profile():
    """n = 4, (B, W, lambda) = (1, 2, 2): s = ceil(1 * 2 / (2 - 1 + 1)) = 1, T = 1, 5 jobs.
    Stragglers per round: r0 {0}, r1 {0, 1}, r2 {}, r3 {2}, r4 {2, 3}, r5 {}.
    By hand (a job decodes with n - s = 3 distinct rows over rounds t and t + 1):
      r0: 1 straggler <= s, nobody repeats -> absorbed by GC; job 0 has rows {1,2,3}: decoded.  2.0
      r1: {0, 1}: lambda 2 >= 2 distinct; worker 0 straggled in r0, but r0 was absorbed, so no burst
          check counts it -> tolerated; job 1 has rows {2, 3}: pending.                        2.0
      r2: job 1 misses v = 2 > s rows -> v - s = 1 worker (lowest id: 0) repeats job 1; no
          stragglers; job 1 gets row 0 -> {0,2,3} decoded; job 2 gets rows {1,2,3} decoded.  1.0
      r3: {2}: r2 had a repeat (not absorbed) but no stragglers -> tolerated; job 3 decoded.   2.0
      r4: {2, 3}: worker 2 straggled in r3, absorbed (no repeat, 1 <= s) -> tolerated; job 4
          has rows {0, 1}: pending.                                                         2.0
      r5 (tail): job 4 misses {2, 3} -> worker 2 repeats it, the others idle; no stragglers;
          job 4 gets row 2 -> decoded.                                                      1.0
    Runtime 10.0, no waits. Counting r0 and r3 in the burst check (the strict reading) turns
    r1 and r4 into waits (3.0 each, every worker delivers, no repeats needed): 2+3+1+2+3 = 11."""
    n, J = 4, 5
    L0 = _hand_profile([{0}, {0, 1}, set(), {2}, {2, 3}, set()], n)
    res = simulate(SRSGC(n, J, B=1, W=2, lam=2), L0, mu=1.0, sec_per_load=0.0)
    assert res.durations.tolist() == [2.0, 2.0, 1.0, 2.0, 2.0, 1.0]
    assert res.waits == 0 and res.runtime == 10.0 and res.fallbacks == 0
    assert res.job_done_time.tolist() == [2.0, 5.0, 5.0, 7.0, 10.0]      # clock at the end of r0, r2, r2, r3, r5
    strict = simulate(SRSGC(n, J, B=1, W=2, lam=2, exempt=False), L0, mu=1.0, sec_per_load=0.0)
    assert strict.durations.tolist() == [2.0, 3.0, 1.0, 2.0, 3.0] and strict.waits == 2


def test_srsgc_tail_round_with_nothing_pending_costs_nothing():
    """n = 4, (B, W, lambda) = (2, 3, 2): s = ceil(2 * 2 / (3 - 1 + 2)) = 1, T = 2, 3 jobs.
    Stragglers: r0 {}, r1 {}, r2 {0, 1}, r3 {}, r4 {}.
      r0, r1: no stragglers, jobs 0 and 1 decode at once.                                  1.0, 1.0
      r2: 2 distinct stragglers <= lambda, no earlier ones -> tolerated; job 2 has {2, 3}.   2.0
      r3 (tail): its pending job (3 - B = 1) decoded in r1, no job 3 -> no work: skipped.   0.0
      r4 (tail): job 2 misses {0, 1} -> worker 0 repeats it -> {0, 2, 3}: decoded.          1.0"""
    n, J = 4, 3
    L0 = _hand_profile([set(), set(), {0, 1}, set(), set()], n)
    res = simulate(SRSGC(n, J, B=2, W=3, lam=2), L0, mu=1.0, sec_per_load=0.0)
    assert res.durations.tolist() == [1.0, 1.0, 2.0, 0.0, 1.0] and res.runtime == 5.0 and res.waits == 0


def _authors_srsgc(delays: np.ndarray, n: int, B: int, W: int, lam: int, J: int, mu: float,
                   burst_skips_absorbed: bool = True) -> tuple[list[float], int]:
    """The authors' SR-SGC master (Sequential-Gradient-Coding-2, selective_repeat_sgc.py, as
    described in /work/shared/specs/sgc.md §3) written independently as a (worker x round) state
    matrix: the job each worker returned, -1 for a straggler. Rounds GC absorbed (no repeat,
    <= s stragglers) are dropped from the model history; the last T rounds are skipped when their
    pending job is already decodable. Returns (round durations, waits)."""
    s = math.ceil(B * lam / (W - 1 + B))
    R = J + B
    state = np.full((n, R), -2)
    absorbed = np.zeros(R, dtype=bool)
    durations, waits = [], 0
    for r in range(R):
        j = r - B
        if r >= J and (state[:, j] == j).sum() >= n - s:
            durations.append(0.0)
            continue
        result = np.full(n, r)
        repeats = False
        if j >= 0:
            missing = np.flatnonzero(state[:, j] != j)
            if len(missing) > s:
                result[missing[: len(missing) - s]] = j
                repeats = True
        d = delays[:, r]
        cut = (1 + mu) * d.min()
        strag = d > cut
        straggled = state == -1
        straggled[:, absorbed] = False
        lo = max(0, r + 1 - W)
        spatial_ok = (straggled[:, lo:r].any(axis=1) | strag).sum() <= lam
        burst_hist = straggled if burst_skips_absorbed else state == -1
        burst_ok = not (burst_hist[:, lo:max(0, r + 1 - B)].any(axis=1) & strag).any()
        if spatial_ok and burst_ok:
            result[strag] = -1
            durations.append(min(cut, d.max()))
            absorbed[r] = not repeats and strag.sum() <= s
        else:
            durations.append(d.max())
            waits += 1
        state[:, r] = result
        if j >= 0 and (state[:, j] == j).sum() + (state[:, r] == j).sum() < n - s:
            raise RuntimeError(f"job {j} not decodable in round {r}")
    return durations, waits


@pytest.mark.parametrize("B,W,lam", [(1, 2, 4), (1, 3, 5), (2, 3, 5), (2, 5, 6)])
def test_srsgc_runtime_equals_the_authors_simulator_round_for_round(B, W, lam):
    """Same profile (Gilbert bursts, which break the model often), same parameters: every round's
    duration and the wait count equal the reference above; the strict reading (absorbed rounds
    counted in the burst check) differs on this profile, so the comparison can tell them apart."""
    n, J, mu = 16, 60, 1.0
    L0 = load0_profile(gilbert_pattern(n, J + B, 0.08, 2.0, seed=7), seed=7)
    sch = SRSGC(n, J, B, W, lam)
    ours = simulate(sch, L0, mu)
    ref, ref_waits = _authors_srsgc(delay_profile(L0, sch.load), n, B, W, lam, J, mu)
    got = ours.durations.tolist() + [0.0] * (len(ref) - ours.rounds)    # after the last decode: skipped
    assert got == pytest.approx(ref, abs=1e-12) and ours.waits == ref_waits and ours.fallbacks == 0
    strict, _ = _authors_srsgc(delay_profile(L0, sch.load), n, B, W, lam, J, mu, burst_skips_absorbed=False)
    assert sum(strict) > sum(ref) + 1e-9
