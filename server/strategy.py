"""Strategies: how the server turns accepted client updates into the next global model.

Flower-shaped (configure / aggregate / evaluate) but incremental: `accumulate` folds each update
into one model-sized running sum as it arrives, so server memory does not grow with the number of
clients in a round.
"""
from __future__ import annotations

import math
from typing import Any

import torch

SUM_LIMIT = torch.finfo(torch.float32).max / 2     # the float32 sum's magnitude stays below this


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
        """Fold one client's update in. Raises ValueError, before changing any state, for an update
        it cannot fold in (wrong shape, NaN or Inf, a value that would overflow the sum): the
        served mode refuses that push and the round goes on."""
        raise NotImplementedError

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FedAvg(Strategy):
    """Sample-weighted mean of client deltas, applied with a server learning rate and optional
    momentum (FedAvgM). Clients send delta = local_model - global_model.

    The running sum is float32, as in Flower's FedAvg and DDP's all-reduce: a float64 sum would
    double the accumulator's memory and cost about twice the time per update (the server's main
    per-byte cost after the checksum). It cannot overflow: each update's max |value| times its
    weight is added to a bound on the sum's magnitude, and an update that would take that bound
    past FLT_MAX / 2 is refused (ValueError) before anything is added."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.0) -> None:
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.velocity: torch.Tensor | None = None
        self._global: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None     # the sum's storage, reused round after round
        self._bound = 0.0                         # >= max |sum|
        self._weight = 0.0
        self._metric_sums: dict[str, float] = {}
        self._count = 0

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self._global = global_vec
        buf = self._buf
        if buf is None or buf.shape != global_vec.shape or buf.device != global_vec.device:
            buf = self._buf = torch.empty_like(global_vec, dtype=torch.float32)
        self._sum = buf.zero_()
        self._bound = 0.0
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
        lo, hi = torch.aminmax(update)
        peak = max(-float(lo), float(hi))          # NaN / inf propagate into `peak`
        if not math.isfinite(peak):
            raise ValueError("update: contains NaN or Inf; allowed: finite values")
        if self._bound + w * peak > SUM_LIMIT:
            raise ValueError(f"update: max |value| {peak:.3g} x weight {w:g} could overflow the float32 sum; "
                             f"allowed: finite values with max |value| x weight <= {SUM_LIMIT - self._bound:.3g}")
        self._bound += w * peak
        self._sum.add_(update, alpha=w)
        self._weight += w
        self._count += 1
        for k, v in (metrics or {}).items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + float(v) * w

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        assert self._global is not None and self._sum is not None, "finalize() before begin_round()"
        if self._weight <= 0:
            return self._global.clone(), {"aggregated": 0}
        # In place where possible: no model-size temporaries beyond the new model itself.
        step = self._sum.div_(self._weight).to(self._global.dtype)   # the buffer is reset next round
        if self.server_momentum > 0:
            if self.velocity is None:
                self.velocity = step.clone()        # never alias the reused buffer
            else:
                self.velocity.mul_(self.server_momentum).add_(step)
            step = self.velocity
        new = torch.add(self._global, step, alpha=self.server_lr)
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
