"""Virtual-clock runtime of a sequential gradient coding scheme on a worker x round delay profile,
and the paper's parameter search (probe profile -> parameters minimising simulated runtime).

A round closes at min((1+mu) * fastest, slowest) when the scheme tolerates the round's stragglers
(workers slower than (1+mu) * fastest), else at the slowest worker (a "wait"); a round with no work
planned (a tail round whose pending job already decoded) is skipped at no cost. The run ends when
the last job decodes. Delays at the scheme's load are load-0 delays + load x seconds per unit load.
"""
from __future__ import annotations

from dataclasses import dataclass, field


import numpy as np

from thinwire.faults.stragglers import SGC_SECONDS_PER_LOAD, delay_profile

from thinwire.coding.schemes import Scheme, make_scheme


@dataclass
class RuntimeResult:
    scheme: str
    params: dict
    load: float
    runtime: float
    waits: int
    rounds: int
    durations: np.ndarray = field(repr=False)
    job_done_time: np.ndarray = field(repr=False)     # virtual time each job decoded
    fallbacks: int = 0


def simulate(scheme: Scheme, load0: np.ndarray, mu: float = 1.0, sec_per_load: float = SGC_SECONDS_PER_LOAD,
             stop_after: float = np.inf, on_decode=None) -> RuntimeResult | None:
    """Run `scheme` over `load0` (worker x round, >= n_jobs + T rounds). None if the runtime
    passes `stop_after` (used by the search to drop losing parameters early). `on_decode(t, scheme)`
    is called for each job as it decodes (before its bookkeeping is released)."""
    d_all = delay_profile(load0, scheme.load, sec_per_load)
    J = scheme.n_jobs
    if d_all.shape[1] < J + scheme.T or d_all.shape[0] < scheme.n:
        raise ValueError(f"delay profile {d_all.shape} too small for n={scheme.n}, {J} jobs + T={scheme.T} rounds")
    durations, waits, clock = [], 0, 0.0
    done = np.full(J, np.nan)
    for r in range(J + scheme.T):
        d = d_all[: scheme.n, r]
        fast = d.min()
        cut = (1.0 + mu) * fast
        strag = d > cut
        plan = scheme.plan(r)
        if not (plan.job >= 0).any():
            # Nothing to compute (a tail round whose pending job already decoded, e.g. SR-SGC
            # after a round without repetition): skipped, it costs no time (as in the authors'
            # simulator) and no worker straggles in it.
            dur, received, strag = 0.0, np.ones(scheme.n, dtype=bool), np.zeros(scheme.n, dtype=bool)
        elif scheme.tolerable(r, plan, strag):
            dur = min(cut, d.max())
            received = ~strag
        else:
            dur, received, strag = d.max(), np.ones(scheme.n, dtype=bool), np.zeros(scheme.n, dtype=bool)
            waits += 1
        clock += dur
        durations.append(dur)
        for t in scheme.record(plan, received, stragglers=strag):
            done[t] = clock
            if on_decode is not None:
                on_decode(t, scheme)
            scheme.release(t)
        if clock > stop_after:
            return None
        if len(scheme.decoded) >= J:
            break
    return RuntimeResult(scheme.name, scheme.params(), scheme.load, float(clock), waits, len(durations),
                         np.array(durations), done, scheme.fallbacks)


def param_grid(name: str, n: int, load0: np.ndarray, mu: float, max_delay: int, max_w: int = 9):
    """Parameters worth trying: lambda / s only up to the most (distinct) stragglers the probe shows
    in a window at load 0 (more load only makes fewer workers stragglers, so larger values only add load)."""
    fast = load0.min(axis=0)
    strag = load0 > (1.0 + mu) * fast
    if name == "uncoded":
        yield {}
        return
    if name == "gc":
        for s in range(0, min(n - 1, int(strag.sum(axis=0).max())) + 1):
            yield {"s": s}
        return

    def cap(W: int) -> int:
        R = strag.shape[1]
        return max(int(strag[:, max(0, r - W + 1): r + 1].any(axis=1).sum()) for r in range(R))

    if name == "sr-sgc":
        for B in range(1, max_delay + 1):
            for W in range(B + 1, max_w + 1, B):
                for lam in range(1, min(n, cap(W) + 1) + 1):
                    yield {"B": B, "W": W, "lam": lam}
        return
    if name == "m-sgc":
        for W in range(2, max_delay + 2):
            for B in range(1, W):
                if W - 2 + B <= max_delay:
                    for lam in range(1, min(n, cap(W) + 1) + 1):
                        yield {"B": B, "W": W, "lam": lam}
        return
    raise ValueError(f"unknown scheme {name!r}")


def search(name: str, load0: np.ndarray, n_jobs: int, mu: float = 1.0, max_delay: int = 4,
           sec_per_load: float = SGC_SECONDS_PER_LOAD, seed: int = 0) -> tuple[dict, RuntimeResult]:
    """Exhaustive search (with early abandon) of a scheme's parameters on a probe profile."""
    n = load0.shape[0]
    best: tuple[dict, RuntimeResult] | None = None
    for p in param_grid(name, n, load0[:, : n_jobs + max_delay], mu, max_delay):
        sch = make_scheme(name, n, n_jobs, seed=seed, **p)
        if sch.T > max_delay:
            continue
        res = simulate(sch, load0, mu, sec_per_load, stop_after=best[1].runtime if best else np.inf)
        if res is not None and (best is None or res.runtime < best[1].runtime):
            best = (p, res)
    assert best is not None
    return best
