"""FedAvg (the sample-weighted mean of client deltas, applied with the server learning rate) and
FedAvgM (the same with server momentum, Hsu et al. 2019), folded with the exact order-independent sum."""
from __future__ import annotations

from typing import Any

import torch

from thinwire.server.exact_sum import ExactSum
from thinwire.server.strategy.base import Result, Strategy
from thinwire.server.strategy.norm_bound import NormBound
from thinwire.task import DEFAULT_TENSOR


class FedAvg(Strategy):
    """Plain FedAvg: the sample-weighted mean of client deltas, applied with a server learning rate.
    Clients send delta = local_model - global_model.

    The sum does not depend on the order results arrive in, bit for bit (`ExactSum`: each delta is
    rounded on its own to a 2**-32 grid and the weighted integers are added exactly), so a served
    run, a resumed run and a simulation of the same clients give the same model. A delta that
    could overflow the sum (or holds NaN / Inf) is refused with ValueError before anything is
    added; the sum's storage is reused round after round.

    EDEN with rotation=shared (issue 21): every client of a round rotates with the same seed, so
    the strategy keeps those payloads encoded (`folds_encoded`), sums their scaled rotated-domain
    estimates exactly (one table lookup each, no transform) and runs one inverse transform per
    round in `finalize`: O(n d + d log d) instead of O(n d log d). A payload whose layout differs
    from the round's (another length or chunking) is decoded and folded as usual."""

    name = "fedavg"

    def __init__(self, cfg=None, *, server_lr: float | None = None, server_momentum: float = 0.0) -> None:
        super().__init__(cfg)
        self.server_lr = server_lr if server_lr is not None else (cfg.server_lr if cfg is not None else 1.0)
        self.server_momentum = server_momentum
        self.velocity: torch.Tensor | None = None
        self._global: torch.Tensor | None = None
        self._sum: ExactSum | None = None
        self.norm_bound = NormBound.from_config(cfg)     # --norm-bound C: clip or refuse, per update
        self._rot: ExactSum | None = None            # rotated-domain sum of shared-rotation EDEN payloads
        self._rot_layout: tuple | None = None
        self._open = False
        self._metric_sums: dict[str, float] = {}

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self._global = global_vec
        if self._sum is not None and self._sum.numel != global_vec.numel():
            self._sum = None
        if self._sum is None and self._sum_up_front():         # allocated up front, as before issue 21
            self._sum = ExactSum(global_vec.numel(), device=global_vec.device)
        for acc in (self._sum, self._rot):       # the rotated sum is allocated at its first fold
            if acc is not None:
                acc.reset()
        self._rot_layout = None
        if self.norm_bound is not None:
            self.norm_bound.reset()
        self._open = True
        self._metric_sums = {}

    def _sees_each_update(self) -> bool:
        """A subclass that clips, buffers or inspects each update (DP-FedAvg, robust rules, FedBuff)
        and --norm-bound must see every delta decoded; only FedAvg's own fold sums them encoded."""
        return type(self).accept is not FedAvg.accept or self.norm_bound is not None

    def _sum_up_front(self) -> bool:
        """Allocate the plain sum when a round opens (else at its first fold, if any)."""
        return not self._folds_rotated()

    def _folds_rotated(self) -> bool:
        """The run's deltas fold in the rotated domain (EDEN with a shared rotation), so the plain
        sum is only allocated if a result needs it (memory: one sum, not two)."""
        codec = str(getattr(self.cfg, "codec", "") or "")
        return (not self._sees_each_update() and codec.startswith("eden:")
                and "rotation=shared" in codec.replace(" ", ""))

    def folds_encoded(self, name: str, enc: Any) -> bool:
        """Keep the model delta encoded when it is an EDEN payload with a per-round shared rotation."""
        return (not self._sees_each_update() and name == DEFAULT_TENSOR and enc.codec == "eden"
                and enc.meta.get("shared") is True)

    def accept(self, result: Result) -> None:
        enc = result.encoded.get(DEFAULT_TENSOR)
        if enc is not None:
            metrics = {k: v for k, v in result.scalars.items() if k == "train_loss"}
            self.fold_encoded(enc, result.num_samples, metrics)
            return
        update = self.model_delta(result, self._global.numel() if self._global is not None else None)
        metrics = {k: v for k, v in result.scalars.items() if k == "train_loss"}
        if self.norm_bound is not None:
            update = self.norm_bound.apply(update)
        self.fold(update, result.num_samples, metrics)

    def model_delta(self, result: Result, numel: int | None) -> torch.Tensor:
        """The result's flat model delta (FedAvg's and its subclasses' one check of it): ValueError
        when it is missing or, with `numel`, not model-sized."""
        update = result.tensors.get(DEFAULT_TENSOR)
        if update is None:
            raise ValueError(f"result: {self.name} needs a {DEFAULT_TENSOR!r} tensor; got {sorted(result.tensors)}")
        update = update.reshape(-1)
        if numel is not None and update.shape != (numel,):
            raise ValueError(f"update: shape {tuple(update.shape)} does not match model ({numel},)")
        return update

    def fold(self, update: torch.Tensor, num_samples: int, metrics: dict[str, float] | None = None) -> None:
        """Add one delta weighted by its sample count (refusing, unchanged, what it cannot add)."""
        if not self._open:
            raise RuntimeError("accept() called before begin_round()")
        assert self._global is not None
        numel = self._global.numel()
        if update.shape != (numel,):
            raise ValueError(f"update: shape {tuple(update.shape)} does not match model ({numel},)")
        if self._sum is None:
            self._sum = ExactSum(numel, device=self._global.device)
        w = max(int(num_samples), 0)
        self._sum.add(update.float(), w)
        self._add_metrics(metrics, w)

    def fold_encoded(self, enc: Any, num_samples: int, metrics: dict[str, float] | None = None) -> None:
        """Fold a shared-rotation EDEN payload in the rotated domain (see the class docstring)."""
        from thinwire.compression.eden import Eden, rotated_flat, rotated_layout

        if not self._open:
            raise RuntimeError("accept() called before begin_round()")
        assert self._global is not None
        if enc.numel != self._global.numel():
            raise ValueError(f"update: {enc.numel} elements do not match the model ({self._global.numel()})")
        layout = rotated_layout(enc)
        if self._rot_layout is not None and layout != self._rot_layout:
            self.fold(Eden(**enc.params).decode(enc, device=self._global.device).reshape(-1), num_samples, metrics)
            return
        flat = rotated_flat(enc, self._global.device)
        if self._rot is None or self._rot.numel != flat.numel():
            self._rot = ExactSum(flat.numel(), device=self._global.device)
        w = max(int(num_samples), 0)
        self._rot.add(flat, w)                  # ValueError before any change, as `fold`
        self._rot_layout = layout
        self._add_metrics(metrics, w)

    def _add_metrics(self, metrics: dict[str, float] | None, w: int) -> None:
        for k, v in (metrics or {}).items():
            self._metric_sums[k] = self._metric_sums.get(k, 0.0) + float(v) * w

    def _mean_step(self) -> tuple[torch.Tensor, int, int]:
        """(weighted mean delta, total weight, results folded) over the plain and rotated sums."""
        from thinwire.compression.eden import unrotate_flat

        plain = self._sum if self._sum is not None and self._sum.weight > 0 else None
        rot = self._rot if self._rot is not None and self._rot.weight > 0 and self._rot_layout else None
        count = sum(a.count for a in (self._sum, self._rot) if a is not None)
        if rot is None:
            if plain is None:
                return torch.empty(0), 0, count
            return plain.mean(), plain.weight, count
        step = unrotate_flat(rot.mean(), self._rot_layout)     # the one inverse transform of the round
        if plain is None:
            return step, rot.weight, count
        total = plain.weight + rot.weight
        step = step.mul_(rot.weight / total).add_(plain.mean(), alpha=plain.weight / total)
        return step, total, count

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        assert self._open and self._global is not None, "finalize() before begin_round()"
        self._open = False
        bound = self.norm_bound.metrics() if self.norm_bound is not None else {}
        step, weight, count = self._mean_step()
        if weight <= 0:
            return self._global.clone(), {"aggregated": 0, **bound}
        new = self.apply_step(step.to(self._global.dtype))
        metrics = {k: v / weight for k, v in self._metric_sums.items()}
        metrics["aggregated"] = count
        metrics.update(bound)
        return new, metrics

    def apply_step(self, step: torch.Tensor) -> torch.Tensor:
        """global + server_lr x step (through the server momentum when it is on). Consumes `step`:
        without momentum the new model is computed in its storage (no fifth model-sized buffer at
        11M parameters, issue 21)."""
        if self.server_momentum > 0:
            if self.velocity is None:
                self.velocity = step
            else:
                self.velocity.mul_(self.server_momentum).add_(step)
            return torch.add(self._global, self.velocity, alpha=self.server_lr)
        return step.mul_(self.server_lr).add_(self._global) if self.server_lr != 1.0 else step.add_(self._global)

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
