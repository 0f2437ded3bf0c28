"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022) on the one round engine.

`concurrency` clients train at the same time, each on the model version of the server step it was
started in. Every result is folded into a buffer the moment it arrives, weighted by its sample
count times a staleness weight w(s), s = server steps since the version it trained on. After
`buffer_size` (K) results the server takes a step; the K finished clients are replaced at once by
new ones drawn uniformly (seeded) from the idle clients. A "round" of the engine is one server
step; the clients still training are carried into the next step (the engine keeps them open:
`spans_steps`), so one client's work may span many steps. K = 1 is FedAsync (Xie et al. 2019).

The step is x += server_lr * sum_k n_k w(s_k) delta_k / sum_k n_k (then server momentum, as
FedAvgM): a stale result moves the model less, and with no staleness (w(0) = 1 for every rule) it
is exactly FedAvg's sample-weighted mean, bit for bit: the staleness weight is kept on a 2**-10
grid so the buffer stays an exact, order-independent integer sum (`ExactSum`).

Checkpoints record who is in flight on which version; a resumed run restarts those clients on
the model it resumes from (their work is redone, never counted twice: a result is folded only
for a task of the running process).

Server memory: the buffer (one int64 sum, as FedAvg) whatever K and the concurrency.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from thinwire.errors import ConfigError
from thinwire.server.strategy.base import Result, RoundView
from thinwire.server.strategy.fedavg import FedAvg
from thinwire.server.strategy.registry import register

STALENESS_RULES = ("constant", "polynomial:a", "hinge:a,b")
WEIGHT_BITS = 10                  # staleness weights on a 2**-10 grid: exact integer weights for ExactSum
SELECT_STREAM = 4242              # the round policy's selection stream: the same draw as FedAvg when all are idle


# -- staleness weights (pure) -------------------------------------------------------------------
def constant_weight(s: int) -> float:
    return 1.0


def polynomial_weight(s: int, a: float) -> float:
    """1 / (1 + s)^a (FedAsync's polynomial rule; a = 0.5 is FedBuff's default)."""
    return float((1.0 + s) ** (-a))


def hinge_weight(s: int, a: float, b: float) -> float:
    """1 while s <= b, then 1 / (a (s - b) + 1) (FedAsync's hinge rule)."""
    return 1.0 if s <= b else 1.0 / (a * (s - b) + 1.0)


def parse_staleness(spec: str) -> Callable[[int], float]:
    """`constant`, `polynomial:a` or `hinge:a,b` -> w(s); ConfigError naming `staleness` otherwise."""
    name, _, args = str(spec).partition(":")
    try:
        vals = [float(v) for v in args.split(",")] if args else []
    except ValueError:
        raise ConfigError("staleness", f"bad numbers in {spec!r}", ", ".join(STALENESS_RULES)) from None
    if any(not math.isfinite(v) or v < 0 for v in vals):
        raise ConfigError("staleness", f"{spec!r} has a negative or non-finite parameter", "a, b >= 0")
    if name == "constant" and not vals:
        return constant_weight
    if name == "polynomial" and len(vals) == 1:
        return lambda s, a=vals[0]: polynomial_weight(s, a)
    if name == "hinge" and len(vals) == 2:
        return lambda s, a=vals[0], b=vals[1]: hinge_weight(s, a, b)
    raise ConfigError("staleness", f"unknown staleness rule {spec!r}", ", ".join(STALENESS_RULES))


def quantized_weight(w: float) -> int:
    """w on the 2**-WEIGHT_BITS grid, as the integer numerator (at least 1: a result always counts)."""
    return max(1, int(round(w * (1 << WEIGHT_BITS))))


def buffer_size_of(cfg) -> int:
    return cfg.buffer_size or cfg.per_round


def concurrency_of(cfg) -> int:
    return min(cfg.concurrency or 2 * buffer_size_of(cfg), cfg.clients)


def check_config(cfg) -> None:
    """FedBuff's settings (RunConfig.validate calls this for every run; it checks the rest only
    for --strategy fedbuff). ConfigError names the field."""
    parse_staleness(cfg.staleness)
    if cfg.strategy != "fedbuff":
        return
    K, C = buffer_size_of(cfg), concurrency_of(cfg)
    if K > cfg.clients:
        raise ConfigError("buffer_size", f"{K} exceeds clients={cfg.clients}", f"1..{cfg.clients}")
    if cfg.concurrency and cfg.concurrency > cfg.clients:
        raise ConfigError("concurrency", f"{cfg.concurrency} exceeds clients={cfg.clients}", f"1..{cfg.clients}")
    if C < K:
        raise ConfigError("concurrency", f"{C} clients in flight can never fill a buffer of {K}", f">= {K}")
    if cfg.deadline > 0:
        raise ConfigError("deadline", "fedbuff steps when its buffer is full; it has no round deadline", "0")
    if cfg.overcommit != 1.0:
        raise ConfigError("overcommit", "fedbuff keeps --concurrency clients busy; over-commitment does not apply",
                          "1.0")
    if cfg.min_clients > K:
        raise ConfigError("min_clients", f"{cfg.min_clients} exceeds the buffer size {K}", f"1..{K}")


class FedBuff(FedAvg):
    """Buffered asynchronous FedAvg(M): K staleness-weighted results per server step."""

    name = "fedbuff"
    spans_steps = True
    max_delay = 1 << 62           # any staleness is accepted; the weight rule discounts it

    def __init__(self, cfg, *, buffer_size: int | None = None, concurrency: int | None = None,
                 staleness: str | None = None, server_lr: float | None = None,
                 server_momentum: float | None = None) -> None:
        beta = server_momentum if server_momentum is not None else cfg.server_momentum
        super().__init__(cfg, server_lr=server_lr, server_momentum=beta)
        self.K = buffer_size or buffer_size_of(cfg)
        self.C = concurrency or concurrency_of(cfg)
        self.weight = parse_staleness(staleness or cfg.staleness)
        self.flying: dict[int, int] = {}      # client -> version (step) its task trains on
        self.redo: set[int] = set()           # in flight at the checkpoint resumed from: started again
        self.step = 0
        self._n_total = 0
        self._staleness: list[int] = []
        self._folded: list[list[int]] = []       # [client, version] of each result in the buffer
        self._started: list[int] = []

    # -- configure -------------------------------------------------------------------------------
    def select(self, rnd: int, candidates: list[int], policy) -> list[int]:
        """Replace finished clients: C - (in flight) new ones, uniformly from the idle candidates,
        plus, right after a resume, the clients that were in flight at the checkpoint."""
        redo = sorted(c for c in self.redo if c in set(candidates))
        for c in self.redo:
            self.flying.pop(c, None)
        self.redo = set()
        busy = set(self.flying) | set(redo)
        idle = np.asarray(sorted(c for c in candidates if c not in busy), dtype=np.int64)
        n = max(0, min(self.C - len(busy), len(idle)))
        rng = np.random.default_rng([policy.seed, SELECT_STREAM, rnd])
        new = [int(c) for c in rng.choice(idle, size=n, replace=False)] if n else []
        self._started = sorted(redo + new)
        return self._started

    def configure_client(self, rnd: int, client_id: int):
        self.flying[client_id] = rnd
        return super().configure_client(rnd, client_id)

    def in_flight(self) -> dict[int, int]:
        return dict(self.flying)

    def lost(self, client_id: int) -> None:
        self.flying.pop(client_id, None)

    # -- aggregate -------------------------------------------------------------------------------
    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        super().begin_round(rnd, global_vec)
        self.step = rnd
        self._n_total = 0
        self._staleness = []
        self._folded = []

    def accept(self, result: Result) -> None:
        if not self._open:
            raise RuntimeError("accept() called before begin_round()")
        update = self.model_delta(result, self._sum.numel)
        s = max(0, self.step - result.round)
        n = max(result.num_samples, 0)
        self._sum.add(update.float(), n * quantized_weight(self.weight(s)))   # refuses before any change
        self._n_total += n
        self._staleness.append(s)
        self._folded.append([int(result.client_id), int(result.round)])
        if "train_loss" in result.scalars:
            self._metric_sums["train_loss"] = self._metric_sums.get("train_loss", 0.0) + float(result.scalars["train_loss"]) * n
        self.flying.pop(result.client_id, None)

    def should_close(self, view: RoundView) -> bool:
        return self._sum.count >= self.K

    def finalize(self) -> tuple[torch.Tensor, dict[str, Any]]:
        assert self._open and self._global is not None, "finalize() before begin_round()"
        self._open = False
        stats = {"staleness_mean": float(np.mean(self._staleness)) if self._staleness else None,
                 "staleness_max": max(self._staleness) if self._staleness else None,
                 "in_flight": len(self.flying), "buffer_size": self.K, "folded": list(self._folded),
                 "started": list(self._started)}
        if self._n_total <= 0:
            return self._global.clone(), {"aggregated": self._sum.count, **stats}
        # sum_k n_k q_k delta_k / (2**WEIGHT_BITS * sum_k n_k): with every q_k = 2**WEIGHT_BITS this is
        # FedAvg's ExactSum.mean bit for bit (power-of-two scalings are exact in float64).
        factor = self._sum.quantum / ((1 << WEIGHT_BITS) * self._n_total)
        step = self._sum.total.to(torch.float64).mul_(factor).to(torch.float32).to(self._global.dtype)
        if self.server_momentum > 0:
            if self.velocity is None:
                self.velocity = step
            else:
                self.velocity.mul_(self.server_momentum).add_(step)
            step = self.velocity
        new = torch.add(self._global, step, alpha=self.server_lr)
        metrics: dict[str, Any] = {k: v / self._n_total for k, v in self._metric_sums.items()}
        metrics.update(aggregated=self._sum.count, **stats)
        return new, metrics

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity, "in_flight": {int(c): int(v) for c, v in self.flying.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = state.get("velocity")
        self.flying = {int(c): int(v) for c, v in (state.get("in_flight") or {}).items()}
        self.redo = set(self.flying)


register("fedbuff", FedBuff)
