"""Byzantine-robust aggregation: coordinate-wise median, trimmed mean (beta), Krum / multi-Krum.

Unlike FedAvg's incremental fold these rules need all of a round's updates at once (a median is
not a running sum), so the strategy keeps one float32 row per accepted update in a buffer sized
when the round opens: `ceil(per_round x overcommit) x model_numel x 4` bytes, refused up front
(ConfigError naming `robust_memory_mb`) when it exceeds `--robust-memory-mb`. The rules then work
on column blocks of `BLOCK` coordinates, so their scratch is O(clients x BLOCK), not another copy
of the buffer. The rules are unweighted (each client counts once, whatever its sample count):
that is their definition, and a weighted median would let a client claim weight. Server momentum
and the server learning rate apply to the robust aggregate as FedAvgM applies them to the mean.
The per-client norm bound (`--norm-bound`) applies first, when set.

Pure functions (`coordinate_median`, `trimmed_mean`, `krum_scores`, `krum_select`) take an (n, d)
tensor and are what the tests check against the definitions.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from thinwire.errors import ConfigError
from thinwire.server.strategy.base import Result
from thinwire.server.strategy.fedavg import FedAvgM
from thinwire.server.strategy.registry import register

log = logging.getLogger("thinwire.robust")
RULES = ("median", "trimmed-mean", "krum")
BLOCK = 1 << 16                      # coordinates per column block of the rules' scratch


# -- the rules (pure) -------------------------------------------------------------------------------
def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """Per coordinate, the median of the n values (even n: the mean of the two middle ones)."""
    n, d = rows.shape
    out = torch.empty(d, dtype=rows.dtype)
    for a in range(0, d, BLOCK):
        s = rows[:, a:a + BLOCK].sort(dim=0).values
        out[a:a + BLOCK] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return out


def trim_count(n: int, beta: float) -> int:
    """Values cut at each end of a coordinate: floor(beta x n), at most (n - 1) // 2."""
    return min(int(math.floor(beta * n)), (n - 1) // 2)


def trimmed_mean(rows: torch.Tensor, beta: float) -> torch.Tensor:
    """Per coordinate, the mean after dropping the floor(beta n) largest and smallest values."""
    n, d = rows.shape
    k = trim_count(n, beta)
    out = torch.empty(d, dtype=rows.dtype)
    for a in range(0, d, BLOCK):
        s = rows[:, a:a + BLOCK].sort(dim=0).values
        out[a:a + BLOCK] = s[k:n - k].double().mean(dim=0).to(rows.dtype)
    return out


def squared_distances(rows: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 squared L2 distances, accumulated over column blocks (|a|^2 + |b|^2 - 2ab)."""
    n, d = rows.shape
    g = torch.zeros(n, n, dtype=torch.float64)
    for a in range(0, d, BLOCK):
        b = rows[:, a:a + BLOCK].double()
        g += b @ b.T
    sq = g.diagonal().clone()
    return (sq[:, None] + sq[None, :] - 2 * g).clamp_(min=0).fill_diagonal_(0)


def krum_neighbours(n: int, f: int) -> int:
    """Krum's neighbour count n - f - 2 (Blanchard et al. 2017), at least 1 when n >= 2."""
    return max(min(n - f - 2, n - 1), 1) if n >= 2 else 0


def krum_scores(rows: torch.Tensor, f: int) -> torch.Tensor:
    """score(i) = sum of squared distances from update i to its n - f - 2 closest other updates."""
    n = rows.shape[0]
    k = krum_neighbours(n, f)
    if k == 0:
        return torch.zeros(n, dtype=torch.float64)
    d2 = squared_distances(rows)
    d2.fill_diagonal_(math.inf)
    return d2.sort(dim=1).values[:, :k].sum(dim=1)


def krum_select(rows: torch.Tensor, f: int, m: int = 1) -> list[int]:
    """Indices of the m lowest Krum scores (ties: lower index first); m = 1 is Krum."""
    scores = krum_scores(rows, f)
    order = sorted(range(rows.shape[0]), key=lambda i: (float(scores[i]), i))
    return order[:max(1, min(m, rows.shape[0]))]


def aggregate(rule: str, rows: torch.Tensor, *, beta: float = 0.1, f: int = 1, m: int = 1) -> tuple[torch.Tensor, dict[str, Any]]:
    """One robust aggregate of the (n, d) rows and what the rule decided."""
    if rule == "median":
        return coordinate_median(rows), {}
    if rule == "trimmed-mean":
        return trimmed_mean(rows, beta), {"trimmed_each_side": trim_count(rows.shape[0], beta)}
    if rule == "krum":
        chosen = krum_select(rows, f, m)
        return rows[chosen].double().mean(dim=0).to(rows.dtype), {"krum_selected": chosen}
    raise ValueError(f"robust rule: {rule!r}; allowed: {', '.join(RULES)}")


# -- memory bound -------------------------------------------------------------------------------------
def buffer_rows(cfg) -> int:
    """Updates a round can accept: the clients it selects."""
    return max(1, cfg.selected_per_round)


def check_memory(cfg, numel: int) -> int:
    """Bytes of the round buffer; ConfigError when it exceeds --robust-memory-mb."""
    need = buffer_rows(cfg) * numel * 4
    budget = float(cfg.robust_memory_mb) * (1 << 20)
    if need > budget:
        raise ConfigError("robust_memory_mb", f"--strategy {cfg.strategy} buffers {buffer_rows(cfg)} updates x "
                          f"{numel:,} values x 4 B = {need / (1 << 20):,.1f} MiB, above the budget of "
                          f"{cfg.robust_memory_mb:g} MiB", f">= {math.ceil(need / (1 << 20))} MiB, or fewer clients per round")
    return need


class RobustAggregate(FedAvgM):
    """`--strategy median | trimmed-mean | krum`: the rule's aggregate of the round's deltas, applied
    with the server learning rate and server momentum (as FedAvgM applies the mean)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.rule = cfg.strategy
        self.name = self.rule
        if self.rule not in RULES:
            raise ConfigError("strategy", f"{self.rule!r} is not a robust rule", ", ".join(RULES))
        self.capacity = buffer_rows(cfg)
        self._rows: torch.Tensor | None = None
        self._n = 0
        self._losses: list[float] = []

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        d = global_vec.numel()
        if self._rows is None or self._rows.shape[1] != d:
            self.buffer_bytes = check_memory(self.cfg, d)
            self._rows = torch.empty(self.capacity, d, dtype=torch.float32)
        self._global, self._n, self._losses, self._open = global_vec, 0, [], True
        if self.norm_bound is not None:
            self.norm_bound.reset()

    def accept(self, result: Result) -> None:
        if not self._open:
            raise RuntimeError("accept() called before begin_round()")
        update = self.model_delta(result, self._rows.shape[1])
        if not bool(torch.isfinite(update).all()):
            raise ValueError("update: holds NaN or Inf")
        if self._n >= self.capacity:
            raise ValueError(f"update: the round already holds {self.capacity} updates (its buffer)")
        if self.norm_bound is not None:
            update = self.norm_bound.apply(update)
        self._rows[self._n].copy_(update)
        self._n += 1
        if "train_loss" in result.scalars:
            self._losses.append(float(result.scalars["train_loss"]))

    def finalize(self) -> tuple[torch.Tensor, dict[str, Any]]:
        assert self._open and self._global is not None, "finalize() before begin_round()"
        self._open = False
        metrics: dict[str, Any] = self.norm_bound.metrics() if self.norm_bound is not None else {}
        if self._n == 0:
            return self._global.clone(), {"aggregated": 0, **metrics}
        cfg = self.cfg
        step, info = aggregate(self.rule, self._rows[:self._n], beta=cfg.trim_beta, f=cfg.krum_f, m=cfg.krum_m)
        if self.rule == "krum" and self._n < 2 * cfg.krum_f + 3:
            log.warning("krum: %d updates < 2f + 3 = %d: Krum's guarantee does not hold this round", self._n,
                        2 * cfg.krum_f + 3)
        new = self.apply_step(step.to(self._global.dtype))
        metrics.update(info)
        metrics["aggregated"] = self._n
        metrics["train_loss"] = sum(self._losses) / len(self._losses) if self._losses else None
        return new, metrics


for _rule in RULES:
    register(_rule, RobustAggregate)
