"""Round policy: who is selected, the deadline, and the least number of results that changes the
model. FedScale-style over-commitment: select ceil(K * overcommit) clients, keep the first K.

The closing itself (first K / all / decodable, the deadline, nobody outstanding) is decided in the
one round loop (thinwire.server.rounds), on the virtual clock in simulation and the wall clock in
served mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


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

    def enough(self, n_accepted: int) -> bool:
        """A round with fewer accepted updates than min_clients leaves the model unchanged."""
        return n_accepted >= self.min_clients
