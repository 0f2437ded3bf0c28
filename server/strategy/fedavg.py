"""FedAvg (the sample-weighted mean of client deltas, applied with the server learning rate) and
FedAvgM (the same with server momentum, Hsu et al. 2019), folded with the exact order-independent sum."""
from __future__ import annotations

from typing import Any

import torch

from thinwire.server.exact_sum import ExactSum
from thinwire.server.strategy.base import Result, Strategy
from thinwire.task import DEFAULT_TENSOR


class FedAvg(Strategy):
    """Plain FedAvg: the sample-weighted mean of client deltas, applied with a server learning rate.
    Clients send delta = local_model - global_model.

    The sum does not depend on the order results arrive in, bit for bit (`ExactSum`: each delta is
    rounded on its own to a 2**-32 grid and the weighted integers are added exactly), so a served
    run, a resumed run and a simulation of the same clients give the same model. A delta that
    could overflow the sum (or holds NaN / Inf) is refused with ValueError before anything is
    added; the sum's storage is reused round after round."""

    name = "fedavg"

    def __init__(self, cfg=None, *, server_lr: float | None = None, server_momentum: float = 0.0) -> None:
        super().__init__(cfg)
        self.server_lr = server_lr if server_lr is not None else (cfg.server_lr if cfg is not None else 1.0)
        self.server_momentum = server_momentum
        self.velocity: torch.Tensor | None = None
        self._global: torch.Tensor | None = None
        self._sum: ExactSum | None = None
        self._open = False
        self._metric_sums: dict[str, float] = {}

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self._global = global_vec
        if self._sum is None or self._sum.numel != global_vec.numel():
            self._sum = ExactSum(global_vec.numel(), device=global_vec.device)
        self._sum.reset()
        self._open = True
        self._metric_sums = {}

    def accept(self, result: Result) -> None:
        update = result.tensors.get(DEFAULT_TENSOR)
        if update is None:
            raise ValueError(f"result: FedAvg needs a {DEFAULT_TENSOR!r} tensor; got {sorted(result.tensors)}")
        metrics = {k: v for k, v in result.scalars.items() if k == "train_loss"}
        self.fold(update.reshape(-1), result.num_samples, metrics)

    def fold(self, update: torch.Tensor, num_samples: int, metrics: dict[str, float] | None = None) -> None:
        """Add one delta weighted by its sample count (refusing, unchanged, what it cannot add)."""
        if not self._open:
            raise RuntimeError("accept() called before begin_round()")
        if update.shape != (self._sum.numel,):
            raise ValueError(f"update: shape {tuple(update.shape)} does not match model ({self._sum.numel},)")
        w = max(int(num_samples), 0)
        self._sum.add(update.float(), w)
        for k, v in (metrics or {}).items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + float(v) * w

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        assert self._open and self._global is not None, "finalize() before begin_round()"
        self._open = False
        if self._sum.weight <= 0:
            return self._global.clone(), {"aggregated": 0}
        step = self._sum.mean().to(self._global.dtype)
        if self.server_momentum > 0:
            if self.velocity is None:
                self.velocity = step
            else:
                self.velocity.mul_(self.server_momentum).add_(step)
            step = self.velocity
            new = torch.add(self._global, step, alpha=self.server_lr)
        else:                                   # in place: no fifth model-sized buffer at 11M (issue 21)
            new = step.mul_(self.server_lr).add_(self._global) if self.server_lr != 1.0 else step.add_(self._global)
        metrics = {k: v / self._sum.weight for k, v in self._metric_sums.items()}
        metrics["aggregated"] = self._sum.count
        return new, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = state.get("velocity")


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019): velocity = beta * velocity + mean delta,
    model += server_lr * velocity. Flower's FedAvgM is the same rule."""

    name = "fedavgm"

    def __init__(self, cfg=None, *, server_lr: float | None = None, server_momentum: float | None = None) -> None:
        beta = server_momentum if server_momentum is not None else (cfg.server_momentum if cfg is not None else 0.9)
        super().__init__(cfg, server_lr=server_lr, server_momentum=beta)
