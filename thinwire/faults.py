"""One seeded fault and network model, used by the simulator's virtual clock and the real wire.

Everything is a pure function of (seed, client id, round, ...): nothing is stored per client, so a
10,000-client fleet costs nothing until a client is selected, and simulation and served mode draw
exactly the same speeds, stragglers and lost chunks for the same seed.

- Profiles give each client a compute speed, up/down bandwidth and latency (named distributions or
  a CSV trace, FedScale-style).
- Stragglers slow a client's compute by a factor: i.i.d. per round, bursty two-state
  Gilbert-Elliott over rounds, or a trace of (client, round, slowdown). `bursty` is the
  sequential-gradient-coding delay profile instead: a (B, W, lambda)-bursty straggler pattern over
  the fleet, a heavy-tailed load-0 time per (client, round), and compute = load-0 time + work.
- Packet loss cuts a payload into chunks, each lost i.i.d. or by a Gilbert-Elliott burst process;
  the loss policy either retransmits (costing time) or delivers with holes.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

# Tags keep the random streams of different concerns independent.
_PROFILE, _STRAGGLE, _LOSS = 101, 202, 303
MAX_ATTEMPTS = 64

# name, share of fleet, compute speed, uplink multiplier of the median, latency multiplier
MOBILE_TIERS = (
    ("wifi", 0.25, 1.5, 4.0, 0.5),
    ("4g", 0.45, 1.0, 1.0, 1.0),
    ("3g", 0.20, 0.6, 0.2, 2.5),
    ("edge", 0.10, 0.3, 0.05, 5.0),
)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


@dataclass(frozen=True)
class ClientProfile:
    client_id: int
    speed: float         # relative compute speed (1 = the reference client)
    up_bps: float        # uplink bits per second
    down_bps: float      # downlink bits per second
    latency_s: float     # one-way latency
    tier: str = ""


@dataclass
class Transfer:
    """What one payload's trip over a link cost."""
    nbytes: int
    time_s: float
    n_chunks: int
    lost_chunks: list[int] = field(default_factory=list)   # still missing after the loss policy
    dropped_chunks: int = 0                                   # chunk losses that happened (incl. retransmitted)
    retransmitted_chunks: int = 0
    wire_bytes: int = 0                                       # bytes sent, retransmissions included
    header_bytes: int = 0                                     # sent reliably ahead of the chunked body


def chunk_ranges(nbytes: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the chunks a payload of `nbytes` is cut into (at least one)."""
    if nbytes <= 0:
        return [(0, 0)]
    return [(s, min(s + chunk_size, nbytes)) for s in range(0, nbytes, chunk_size)]


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


class NetworkModel:
    """Seeded per-client speeds, links, stragglers and chunk losses."""

    def __init__(self, *, seed: int = 0, profile: str = "uniform", bandwidth_mbps: float = 10.0,
                 latency_ms: float = 50.0, compute_per_sample: float = 0.002, trace: str = "",
                 stragglers: str = "none", straggler_prob: float = 0.0, straggler_slowdown: float = 5.0,
                 straggler_burst: float = 5.0, straggler_trace: str = "", loss: str = "none",
                 loss_prob: float = 0.0, loss_burst: float = 3.0, loss_policy: str = "retransmit",
                 chunk_size: int = 65536, clients: int = 0, rounds: int = 0,
                 straggler_bursty: Sequence[int] = (1, 2, 27), load0_s: float = 0.8) -> None:
        self.seed = seed
        self.profile_name = profile
        self.bandwidth_bps = bandwidth_mbps * 1e6
        self.latency_s = latency_ms / 1e3
        self.compute_per_sample = compute_per_sample
        self.stragglers = stragglers
        self.straggler_prob = straggler_prob
        self.straggler_slowdown = straggler_slowdown
        self.straggler_burst = straggler_burst
        self.loss = loss
        self.loss_prob = loss_prob
        self.loss_burst = loss_burst
        self.loss_policy = loss_policy
        self.chunk_size = chunk_size
        self._profile_rows = read_profile_trace(trace) if profile == "trace" else None
        self._straggle_rows = read_straggler_trace(straggler_trace or trace) if stragglers == "trace" else None
        self._profile_cached = lru_cache(maxsize=65536)(self._make_profile)
        self.clients, self.rounds = int(clients), max(int(rounds), 1)
        self.straggler_bursty = tuple(int(v) for v in straggler_bursty)
        self.load0_s = load0_s
        self._bursty: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_config(cls, cfg: "RunConfig") -> "NetworkModel":
        return cls(seed=cfg.seed, profile=cfg.profile, bandwidth_mbps=cfg.bandwidth_mbps, latency_ms=cfg.latency_ms,
                   compute_per_sample=cfg.compute_per_sample, trace=cfg.trace, stragglers=cfg.stragglers,
                   straggler_prob=cfg.straggler_prob, straggler_slowdown=cfg.straggler_slowdown,
                   straggler_burst=cfg.straggler_burst, straggler_trace=cfg.straggler_trace, loss=cfg.loss,
                   loss_prob=cfg.loss_prob, loss_burst=cfg.loss_burst, loss_policy=cfg.loss_policy,
                   chunk_size=cfg.chunk_size, clients=cfg.clients, rounds=cfg.rounds,
                   straggler_bursty=cfg.straggler_bursty, load0_s=cfg.load0_s)

    # -- profiles --------------------------------------------------------------------------
    def profile(self, k: int) -> ClientProfile:
        return self._profile_cached(int(k))

    def _make_profile(self, k: int) -> ClientProfile:
        bw, lat = self.bandwidth_bps, self.latency_s
        if self._profile_rows is not None:
            row = self._profile_rows[k % len(self._profile_rows)]
            return ClientProfile(k, row[0], row[1] * 1e6, row[2] * 1e6, row[3] / 1e3, "trace")
        r = _rng(self.seed, _PROFILE, k)
        name = self.profile_name
        if name == "uniform":
            speed, up, l = r.uniform(0.5, 1.5, size=3)
            return ClientProfile(k, float(speed), float(bw * up), float(4 * bw * up), float(lat * l), "uniform")
        if name == "lognormal":
            speed, up, l = r.lognormal(0.0, [0.5, 0.8, 0.4])
            return ClientProfile(k, float(speed), float(bw * up), float(4 * bw * up), float(lat * l), "lognormal")
        if name == "mobile":
            shares = np.array([t[1] for t in MOBILE_TIERS])
            tier = MOBILE_TIERS[int(r.choice(len(MOBILE_TIERS), p=shares / shares.sum()))]
            jitter = r.uniform(0.8, 1.25, size=3)
            up = bw * tier[3] * jitter[1]
            return ClientProfile(k, float(tier[2] * jitter[0]), float(up), float(4 * up),
                                 float(lat * tier[4] * jitter[2]), tier[0])
        if name == "datacenter":
            return ClientProfile(k, 1.0, 10e9, 10e9, 1e-4, "datacenter")
        raise ConfigError("profile", f"unknown profile {name!r}", "uniform, lognormal, mobile, datacenter, trace")

    # -- stragglers --------------------------------------------------------------------------
    def bursty_profile(self) -> tuple[np.ndarray, np.ndarray]:
        """--stragglers bursty: the (clients x rounds) straggler pattern, (B, W, lambda)-bursty with
        bursts started at rate straggler_prob, and the load-0 times it implies (heavy-tailed for
        stragglers, at least straggler_slowdown x the round's typical time). Rounds past the run's
        length wrap around. Built once: the lambda budget couples the clients of a round."""
        if self._bursty is None:
            if self.clients < 1:
                raise ConfigError("clients", "the bursty straggler model needs the fleet size", ">= 1")
            B, W, lam = self.straggler_bursty
            pat = bursty_pattern(self.clients, self.rounds, B, W, min(lam, self.clients), self.straggler_prob,
                                 seed=self.seed)
            self._bursty = (pat, load0_profile(pat, seed=self.seed, base_s=self.load0_s,
                                               slow_min=self.straggler_slowdown))
        return self._bursty

    def straggler_factor(self, k: int, rnd: int) -> float:
        """Compute slowdown of client k in round rnd (1.0 = on time)."""
        if self.stragglers == "bursty":
            pat = self.bursty_profile()[0]
            return self.straggler_slowdown if pat[k % pat.shape[0], rnd % pat.shape[1]] else 1.0
        if self.stragglers == "none" or (self.stragglers != "trace" and self.straggler_prob <= 0):
            return 1.0
        if self.stragglers == "iid":
            return self.straggler_slowdown if _rng(self.seed, _STRAGGLE, k, rnd).random() < self.straggler_prob else 1.0
        if self.stragglers == "gilbert":
            path = two_state_path(_rng(self.seed, _STRAGGLE, k), rnd + 1, self.straggler_prob, self.straggler_burst)
            return self.straggler_slowdown if path[rnd] else 1.0
        if self.stragglers == "trace":
            return self._straggle_rows.get((k, rnd), 1.0)  # type: ignore[union-attr]
        raise ConfigError("stragglers", f"unknown model {self.stragglers!r}", "none, iid, gilbert, trace, bursty")

    def compute_time(self, k: int, rnd: int, n_samples: float) -> float:
        """Seconds client k computes `n_samples` of work in round rnd. Under `bursty` it is the
        delay profile of sequential gradient coding: load-0 time + work (proportional to load)."""
        prof = self.profile(k)
        work = n_samples * self.compute_per_sample / prof.speed
        if self.stragglers == "bursty":
            load0 = self.bursty_profile()[1]
            return float(load0[k % load0.shape[0], rnd % load0.shape[1]]) + work
        return work * self.straggler_factor(k, rnd)

    # -- packet loss -------------------------------------------------------------------------
    def lost_chunks(self, k: int, rnd: int, n_chunks: int, attempt: int = 0, direction: str = "up") -> np.ndarray:
        """Boolean mask of the chunks lost on this attempt of this transfer."""
        if self.loss == "none" or self.loss_prob <= 0 or n_chunks <= 0:
            return np.zeros(max(n_chunks, 0), dtype=bool)
        r = _rng(self.seed, _LOSS, k, rnd, attempt, 0 if direction == "up" else 1)
        if self.loss == "iid":
            return r.random(n_chunks) < self.loss_prob
        if self.loss == "gilbert":
            return two_state_path(r, n_chunks, self.loss_prob, self.loss_burst)
        raise ConfigError("loss", f"unknown model {self.loss!r}", "none, iid, gilbert")

    def transfer(self, k: int, rnd: int, nbytes: int, direction: str = "up", header_bytes: int = 0,
                 policy: str | None = None) -> Transfer:
        """Time and losses of sending `nbytes` (header included) over client k's link.

        The first `header_bytes` travel reliably (duplicated header); the body is chunked. Under
        `retransmit` lost chunks are resent (one NACK round trip per attempt); under `holes` they
        stay lost and are reported in `lost_chunks` (body-relative chunk indices).
        """
        prof = self.profile(k)
        bps = prof.up_bps if direction == "up" else prof.down_bps
        policy = policy or self.loss_policy
        body = max(0, nbytes - header_bytes)
        ranges = chunk_ranges(body, self.chunk_size)
        sizes = np.array([e - s for s, e in ranges], dtype=np.int64)
        time_s = prof.latency_s + nbytes * 8.0 / bps
        wire = nbytes
        lost = self.lost_chunks(k, rnd, len(ranges), 0, direction) & (sizes > 0)
        dropped = int(lost.sum())
        retrans = 0
        attempt = 0
        while policy == "retransmit" and lost.any():
            attempt += 1
            if attempt > MAX_ATTEMPTS:
                raise RuntimeError(f"client {k}: gave up after {MAX_ATTEMPTS} retransmission attempts")
            idx = np.flatnonzero(lost)
            resend = int(sizes[idx].sum())
            time_s += 2 * prof.latency_s + resend * 8.0 / bps
            wire += resend
            retrans += len(idx)
            again = self.lost_chunks(k, rnd, len(idx), attempt, direction)
            lost = np.zeros_like(lost)
            lost[idx[again]] = True
            dropped += int(again.sum())
        return Transfer(nbytes=nbytes, time_s=float(time_s), n_chunks=len(ranges),
                        lost_chunks=[int(i) for i in np.flatnonzero(lost)], dropped_chunks=dropped,
                        retransmitted_chunks=retrans, wire_bytes=int(wire), header_bytes=header_bytes)

    def upload(self, k: int, rnd: int, nbytes: int, header_bytes: int = 0) -> Transfer:
        return self.transfer(k, rnd, nbytes, "up", header_bytes)

    def download(self, k: int, rnd: int, nbytes: int) -> Transfer:
        """The model broadcast must arrive whole: downloads always retransmit."""
        return self.transfer(k, rnd, nbytes, "down", 0, policy="retransmit")

    def holes(self, transfer: Transfer) -> list[tuple[int, int]]:
        """Body-relative byte ranges of the chunks a transfer left missing."""
        body = transfer.nbytes - transfer.header_bytes
        ranges = chunk_ranges(body, self.chunk_size)
        return [ranges[i] for i in transfer.lost_chunks]


# -- traces -----------------------------------------------------------------------------------
def _read_csv(path: str, required: Sequence[str], field: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(field, f"cannot read trace {path!r} ({e.strerror})", "a readable CSV file") from None
    if not rows:
        raise ConfigError(field, f"trace {path!r} has no rows", f"a CSV with columns {', '.join(required)}")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise ConfigError(field, f"trace {path!r} lacks columns {', '.join(missing)}",
                          f"a CSV with columns {', '.join(required)}")
    return rows


def read_profile_trace(path: str) -> list[tuple[float, float, float, float]]:
    """CSV `client_id,speed,up_mbps,down_mbps,latency_ms`; clients beyond the trace wrap around."""
    cols = ("client_id", "speed", "up_mbps", "down_mbps", "latency_ms")
    rows = _read_csv(path, cols, "trace")
    out = []
    for i, row in enumerate(sorted(rows, key=lambda r: int(r["client_id"]))):
        try:
            vals = tuple(float(row[c]) for c in cols[1:])
        except ValueError:
            raise ConfigError("trace", f"{path}: row {i + 2} has a non-numeric value", "numbers") from None
        if min(vals[:3]) <= 0 or vals[3] < 0 or not all(math.isfinite(v) for v in vals):
            raise ConfigError("trace", f"{path}: row {i + 2} has a non-positive speed or bandwidth",
                              "speed, up_mbps, down_mbps > 0 and latency_ms >= 0")
        out.append(vals)  # type: ignore[arg-type]
    return out


def read_straggler_trace(path: str) -> dict[tuple[int, int], float]:
    """CSV `client_id,round,slowdown`: the listed (client, round) pairs straggle by that factor."""
    rows = _read_csv(path, ("client_id", "round", "slowdown"), "straggler_trace")
    out = {}
    for i, row in enumerate(rows):
        try:
            k, r, s = int(row["client_id"]), int(row["round"]), float(row["slowdown"])
        except ValueError:
            raise ConfigError("straggler_trace", f"{path}: row {i + 2} is not client_id,round,slowdown numbers") from None
        if s < 1.0:
            raise ConfigError("straggler_trace", f"{path}: row {i + 2} slowdown {s} < 1", ">= 1")
        out[(k, r)] = s
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
    rng = _rng(seed, _STRAGGLE, n, rounds, B, W, lam)
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
    return np.stack([two_state_path(_rng(seed, _STRAGGLE, k), rounds, p_bad, mean_burst) for k in range(n)]) \
        if n else np.zeros((0, rounds), dtype=bool)


def load0_profile(pattern: np.ndarray, seed: int = 0, base_s: float = 0.8, spread: float = 0.08,
                  round_jitter: float = 0.08, slow_min: float = 2.3, tail_shape: float = 2.5) -> np.ndarray:
    """Load-0 completion times (worker x round) with measured-like tails: non-stragglers around
    `base_s` (per-round common jitter and per-worker lognormal spread), stragglers (True in
    `pattern`) at slow_min x the round's typical time times a Pareto(tail_shape) tail."""
    n, rounds = pattern.shape
    rng = _rng(seed, _STRAGGLE, 4242, n, rounds)
    common = base_s * rng.lognormal(0.0, round_jitter, size=rounds)
    t = common[None, :] * rng.lognormal(0.0, spread, size=(n, rounds))
    slow = common[None, :] * slow_min * (1.0 + rng.pareto(tail_shape, size=(n, rounds)))
    return np.where(pattern, np.maximum(t, slow), t)


def delay_profile(load0: np.ndarray, load: float, sec_per_load: float = SGC_SECONDS_PER_LOAD) -> np.ndarray:
    """Completion times at a normalized load: load-0 time + load x seconds per unit load."""
    return np.asarray(load0, dtype=float) + load * sec_per_load


def write_completion_trace(path: str, times: np.ndarray) -> None:
    """CSV `client_id,round,time_s` of a worker x round completion-time matrix."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["client_id", "round", "time_s"])
        for k in range(times.shape[0]):
            for r in range(times.shape[1]):
                w.writerow([k, r, repr(float(times[k, r]))])


def read_completion_trace(path: str) -> np.ndarray:
    """Worker x round completion-time matrix from CSV `client_id,round,time_s` (every cell present)."""
    rows = _read_csv(path, ("client_id", "round", "time_s"), "completion_trace")
    try:
        cells = [(int(r["client_id"]), int(r["round"]), float(r["time_s"])) for r in rows]
    except ValueError:
        raise ConfigError("completion_trace", f"{path}: a row is not client_id,round,time_s numbers") from None
    n = 1 + max(c[0] for c in cells)
    rounds = 1 + max(c[1] for c in cells)
    out = np.full((n, rounds), np.nan)
    for k, r, t in cells:
        if k < 0 or r < 0 or not (t >= 0 and math.isfinite(t)):
            raise ConfigError("completion_trace", f"{path}: bad cell client {k} round {r} time {t}",
                              "client_id, round >= 0 and a finite time_s >= 0")
        out[k, r] = t
    if np.isnan(out).any():
        raise ConfigError("completion_trace", f"{path}: missing (client, round) cells",
                          "one row per client per round")
    return out
