"""One seeded network model, used by the simulator's virtual clock and the real wire (`--emulate`).

Everything is a pure function of (seed, client id, round, ...): nothing is stored per client, so a
10,000-client fleet costs nothing until a client is selected, and simulation and served mode draw
exactly the same speeds, stragglers and lost chunks for the same seed.

- Profiles give each client a compute speed, up/down bandwidth and latency (named distributions or
  a CSV trace, FedScale-style).
- Stragglers slow a client's compute by a factor (the patterns are in `thinwire.faults.stragglers`).
- Packet loss cuts a payload into chunks, each lost i.i.d. or by a Gilbert-Elliott burst process;
  the loss policy either retransmits (costing time) or delivers with holes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

from thinwire.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from thinwire.config import RunConfig
from thinwire.faults.stragglers import STRAGGLE_TAG, bursty_pattern, load0_profile, seeded_rng, two_state_path
from thinwire.faults.traces import read_profile_trace, read_straggler_trace

# Tags keep the random streams of different concerns independent.
_PROFILE, _LOSS = 101, 303
MAX_ATTEMPTS = 64

# name, share of fleet, compute speed, uplink multiplier of the median, latency multiplier
MOBILE_TIERS = (
    ("wifi", 0.25, 1.5, 4.0, 0.5),
    ("4g", 0.45, 1.0, 1.0, 1.0),
    ("3g", 0.20, 0.6, 0.2, 2.5),
    ("edge", 0.10, 0.3, 0.05, 5.0),
)


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
        r = seeded_rng(self.seed, _PROFILE, k)
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
            return self.straggler_slowdown if seeded_rng(self.seed, STRAGGLE_TAG, k, rnd).random() < self.straggler_prob else 1.0
        if self.stragglers == "gilbert":
            path = two_state_path(seeded_rng(self.seed, STRAGGLE_TAG, k), rnd + 1, self.straggler_prob, self.straggler_burst)
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
        r = seeded_rng(self.seed, _LOSS, k, rnd, attempt, 0 if direction == "up" else 1)
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
        time_s = self.message_time(k, nbytes, direction)
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

    def message_time(self, k: int, nbytes: int, direction: str = "up") -> float:
        """Seconds one message of `nbytes` takes on client k's link, losses aside: latency + size / rate."""
        prof = self.profile(k)
        return prof.latency_s + nbytes * 8.0 / (prof.up_bps if direction == "up" else prof.down_bps)

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
