"""Strategies: how the server turns accepted client updates into the next global model.

Flower-shaped (configure / aggregate / evaluate) but incremental: `accumulate` folds each update
into one model-sized running sum as it arrives, so server memory does not grow with the number of
clients in a round.
"""
from __future__ import annotations

from typing import Any

import torch


class Strategy:
    """Base class. Subclasses override the aggregation rule; the round bookkeeping lives here."""

    name = "base"

    def configure_round(self, rnd: int, client_ids: list[int]) -> dict[str, Any]:
        """Per-round settings sent to every selected client (merged into its task)."""
        return {}

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulate(self, client_id: int, update: torch.Tensor, num_samples: int,
                   metrics: dict[str, float] | None = None) -> None:
        raise NotImplementedError

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FedAvg(Strategy):
    """Sample-weighted mean of client deltas, applied with a server learning rate and optional
    momentum (FedAvgM). Clients send delta = local_model - global_model."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.0) -> None:
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.velocity: torch.Tensor | None = None
        self._global: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._weight = 0.0
        self._metric_sums: dict[str, float] = {}
        self._count = 0

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self._global = global_vec
        self._sum = torch.zeros_like(global_vec, dtype=torch.float64)
        self._weight = 0.0
        self._metric_sums = {}
        self._count = 0

    def accumulate(self, client_id: int, update: torch.Tensor, num_samples: int,
                   metrics: dict[str, float] | None = None) -> None:
        if self._sum is None:
            raise RuntimeError("accumulate() called before begin_round()")
        if update.shape != self._sum.shape:
            raise ValueError(f"update: shape {tuple(update.shape)} does not match model {tuple(self._sum.shape)}")
        w = float(max(num_samples, 0))
        self._sum.add_(update, alpha=w)  # promoted on the fly, no float64 copy of the update
        self._weight += w
        self._count += 1
        for k, v in (metrics or {}).items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + float(v) * w

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        assert self._global is not None and self._sum is not None, "finalize() before begin_round()"
        if self._weight <= 0:
            return self._global.clone(), {"aggregated": 0}
        step = (self._sum / self._weight).to(self._global.dtype)
        if self.server_momentum > 0:
            self.velocity = step if self.velocity is None else self.server_momentum * self.velocity + step
            step = self.velocity
        new = self._global + self.server_lr * step
        metrics = {k: v / self._weight for k, v in self._metric_sums.items()}
        metrics["aggregated"] = self._count
        self._sum = None
        return new, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = state.get("velocity")


def make_strategy(cfg) -> Strategy:
    if cfg.strategy == "fedavg":
        return FedAvg(server_lr=cfg.server_lr, server_momentum=cfg.server_momentum)
    from thinwire.errors import ConfigError
    raise ConfigError("strategy", f"unknown strategy {cfg.strategy!r}", "fedavg")
