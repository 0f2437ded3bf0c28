"""Round driver policy: who is selected, whose update counts, when a round closes.

FedScale-style over-commitment: select ceil(K * overcommit) clients, aggregate the first K to
finish, drop anyone finishing after the deadline. The same object serves the simulator (which
knows every finish time on its virtual clock: `close_by_times`) and the real server (which sees
arrivals one by one in wall time: `admit` / `should_close`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass
class RoundOutcome:
    accepted: list[int]                  # clients whose updates are aggregated, in finish order
    late: list[int]                      # finished after the first K or after the deadline
    round_time: float                    # when the round closed, relative to its start
    finish_times: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundPolicy:
    clients: int
    per_round: int
    overcommit: float = 1.0
    deadline: float = 0.0                # seconds; 0 = no deadline
    min_clients: int = 1
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "RoundPolicy":
        return cls(clients=cfg.clients, per_round=cfg.per_round, overcommit=cfg.overcommit, deadline=cfg.deadline,
                   min_clients=cfg.min_clients, seed=cfg.seed)

    @property
    def n_select(self) -> int:
        return min(self.clients, math.ceil(self.per_round * self.overcommit - 1e-9))

    def select(self, rnd: int, candidates: Sequence[int] | None = None) -> list[int]:
        """Seeded uniform sample of the round's clients (from `candidates`, default all)."""
        rng = np.random.default_rng([self.seed, 4242, rnd])
        if candidates is None:
            n = min(self.n_select, self.clients)
            return sorted(int(i) for i in rng.choice(self.clients, size=n, replace=False))
        pool = np.asarray(sorted(candidates))
        n = min(self.n_select, len(pool))
        return sorted(int(i) for i in rng.choice(pool, size=n, replace=False))

    # -- virtual clock ------------------------------------------------------------------------
    def close_by_times(self, finish_times: Mapping[int, float]) -> RoundOutcome:
        """Accept the first K finishers within the deadline; the round closes at the K-th finish,
        or at the deadline if fewer than K made it, or at the last finish when there is no deadline."""
        order = sorted(finish_times.items(), key=lambda kv: (kv[1], kv[0]))
        accepted, late = [], []
        for cid, t in order:
            if len(accepted) < self.per_round and (self.deadline <= 0 or t <= self.deadline):
                accepted.append(cid)
            else:
                late.append(cid)
        if len(accepted) == self.per_round:
            close = finish_times[accepted[-1]]
        elif self.deadline > 0:
            close = self.deadline
        else:
            close = max(finish_times.values(), default=0.0)
        return RoundOutcome(accepted, late, float(close), dict(finish_times))

    # -- wall clock ------------------------------------------------------------------------
    def admit(self, n_accepted: int, elapsed_s: float) -> bool:
        """Whether an update arriving now still counts."""
        return n_accepted < self.per_round and (self.deadline <= 0 or elapsed_s <= self.deadline)

    def should_close(self, n_accepted: int, n_outstanding: int, elapsed_s: float) -> bool:
        return (n_accepted >= self.per_round or (self.deadline > 0 and elapsed_s >= self.deadline)
                or n_outstanding <= 0)

    def enough(self, n_accepted: int) -> bool:
        """A round with fewer accepted updates than min_clients leaves the model unchanged."""
        return n_accepted >= self.min_clients
