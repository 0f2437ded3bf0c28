"""Straggler processes: i.i.d. and two-state Gilbert-Elliott paths, and the worker x round patterns
of sequential gradient coding ((B, W, lambda)-bursty, per-worker Gilbert), with load-0 completion
times and delay profiles.

Pure functions of a seed; `seeded_rng` gives every concern its own independent random stream."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    pass
STRAGGLE_TAG = 202


def seeded_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


def two_state_path(rng: np.random.Generator, n: int, p_bad: float, mean_bad_len: float) -> np.ndarray:
    """A Gilbert-Elliott good/bad state path of length n (True = bad).

    Stationary bad share p_bad, mean bad run mean_bad_len; generated from geometric run lengths
    so the cost is proportional to the number of runs, not a Python loop over n.
    """
    if n <= 0 or p_bad <= 0.0:
        return np.zeros(max(n, 0), dtype=bool)
    if p_bad >= 1.0:
        return np.ones(n, dtype=bool)
    q = 1.0 / max(mean_bad_len, 1.0)                   # leave bad
    p = min(1.0, q * p_bad / (1.0 - p_bad))             # enter bad
    bad = bool(rng.random() < p_bad)
    out = np.empty(n, dtype=bool)
    pos = 0
    while pos < n:
        block = 64
        lens_good = rng.geometric(p, size=block)
        lens_bad = rng.geometric(q, size=block)
        for g, b in zip(lens_good, lens_bad):
            for state, length in ((bad, int(b if bad else g)), (not bad, int(g if bad else b))):
                end = min(n, pos + length)
                out[pos:end] = state
                pos = end
                if pos >= n:
                    return out
    return out


# -- sequential gradient coding: worker x round straggler patterns and completion times ---------
# The bursty sliding-window model of Krishnan, Ebrahimi & Khisti (ICLR 2023) and a per-worker
# Gilbert-Elliott pattern, as (worker x round) boolean matrices; a delay profile is the load-0
# completion time of each (worker, round) plus load x seconds-per-unit-load (the paper fits 2.2013).
SGC_SECONDS_PER_LOAD = 2.2013


def bursty_conforms(past: np.ndarray, current: np.ndarray, B: int, W: int, lam: int) -> bool:
    """Does straggler set `current` keep the pattern (B, W, lambda)-bursty?

    `past` is the (worker x k) pattern of the rounds before, most recent last (only the last W-1
    columns matter). Spatial: at most lambda distinct stragglers in the window of the last W rounds.
    Temporal: a worker straggling now did not straggle in rounds r-W+1 .. r-B (one burst <= B)."""
    past = np.asarray(past, dtype=bool)
    current = np.asarray(current, dtype=bool)
    win = past[:, max(0, past.shape[1] - (W - 1)):] if W > 1 else past[:, :0]
    if int((win.any(axis=1) | current).sum()) > lam:
        return False
    k = win.shape[1]
    early = win[:, : max(0, k - (B - 1))]          # rounds r-W+1 .. r-B
    return not bool((early.any(axis=1) & current).any())


def pattern_conforms(pattern: np.ndarray, B: int, W: int, lam: int) -> bool:
    """Whole (worker x round) pattern fits the (B, W, lambda)-bursty model in every window."""
    pattern = np.asarray(pattern, dtype=bool)
    return all(bursty_conforms(pattern[:, :r], pattern[:, r], B, W, lam) for r in range(pattern.shape[1]))


def bursty_pattern(n: int, rounds: int, B: int, W: int, lam: int, start_prob: float, seed: int = 0) -> np.ndarray:
    """A random (worker x round) straggler pattern that fits the (B, W, lambda)-bursty model.

    Each worker free to straggle (no straggle in its last W-1 rounds) starts a burst with
    probability `start_prob`, of length uniform in 1..B; new stragglers are admitted in random
    order only while the window holds fewer than lambda distinct ones."""
    rng = seeded_rng(seed, STRAGGLE_TAG, n, rounds, B, W, lam)
    out = np.zeros((n, rounds), dtype=bool)
    left = np.zeros(n, dtype=np.int64)               # rounds left in the current burst
    for r in range(rounds):
        cont = left > 0
        lo = max(0, r - (W - 1))
        in_window = out[:, lo:r].any(axis=1)
        free = ~in_window
        cur = cont.copy()
        budget = lam - int((in_window | cur).sum())
        cand = np.flatnonzero(free & (rng.random(n) < start_prob))
        rng.shuffle(cand)
        take = cand[: max(0, budget)]
        cur[take] = True
        left[take] = rng.integers(1, B + 1, size=len(take))
        out[:, r] = cur
        left[cur] -= 1
    return out


def gilbert_pattern(n: int, rounds: int, p_bad: float, mean_burst: float, seed: int = 0) -> np.ndarray:
    """Per-worker Gilbert-Elliott straggling (worker x round); the same paths as
    NetworkModel(stragglers='gilbert').straggler_factor draws for each worker."""
    return np.stack([two_state_path(seeded_rng(seed, STRAGGLE_TAG, k), rounds, p_bad, mean_burst) for k in range(n)]) \
        if n else np.zeros((0, rounds), dtype=bool)


def load0_profile(pattern: np.ndarray, seed: int = 0, base_s: float = 0.8, spread: float = 0.08,
                  round_jitter: float = 0.08, slow_min: float = 2.3, tail_shape: float = 2.5) -> np.ndarray:
    """Load-0 completion times (worker x round) with measured-like tails: non-stragglers around
    `base_s` (per-round common jitter and per-worker lognormal spread), stragglers (True in
    `pattern`) at slow_min x the round's typical time times a Pareto(tail_shape) tail."""
    n, rounds = pattern.shape
    rng = seeded_rng(seed, STRAGGLE_TAG, 4242, n, rounds)
    common = base_s * rng.lognormal(0.0, round_jitter, size=rounds)
    t = common[None, :] * rng.lognormal(0.0, spread, size=(n, rounds))
    slow = common[None, :] * slow_min * (1.0 + rng.pareto(tail_shape, size=(n, rounds)))
    return np.where(pattern, np.maximum(t, slow), t)


def delay_profile(load0: np.ndarray, load: float, sec_per_load: float = SGC_SECONDS_PER_LOAD) -> np.ndarray:
    """Completion times at a normalized load: load-0 time + load x seconds per unit load."""
    return np.asarray(load0, dtype=float) + load * sec_per_load
