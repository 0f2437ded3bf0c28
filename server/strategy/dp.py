"""Central differential privacy: DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
Differentially Private Recurrent Language Models"), user-level, with a Renyi-DP accountant.

Per round:
  1. sampling: **Poisson** -- every candidate client takes part independently with probability
     q = per_round / clients (DP-FedAvg's sampling; the round's size varies around per_round);
  2. each accepted update is clipped on the server to L2 norm C (`--dp-clip`), unweighted;
  3. the clipped updates are added (the exact, order-independent sum of FedAvg);
  4. Gaussian noise of std z x C (`--dp-noise` z) is added to the sum, which is divided by the
     *expected* count q x clients = per_round (the fixed-denominator estimator f_f with w = 1),
     and applied with the server learning rate and momentum (post-processing).

Adding or removing one client changes the sum by at most C, so each round is the sampled Gaussian
mechanism with noise multiplier z and rate q; `dp_accounting`'s RdpAccountant (Google's maintained
library, add/remove adjacency) composes the rounds and converts to (epsilon, delta) at `--dp-delta`.
Every round is charged, also one that ends with too few clients to move the model. epsilon and
delta go into every metrics row (`dp_epsilon`, `dp_delta`) and the run summary.

Memory: the incremental fold, as FedAvg (no buffering).
What is *not* covered: see docs/trust.md (trusted server, floating-point noise, seeded runs).
"""
from __future__ import annotations

import logging
import secrets
from typing import Any

import numpy as np
import torch

from thinwire.errors import ConfigError
from thinwire.server.strategy.base import Result, RoundView, close_when_all
from thinwire.server.strategy.fedavg import FedAvgM
from thinwire.server.strategy.norm_bound import clip_to_norm
from thinwire.server.strategy.registry import register
from thinwire.task import DEFAULT_TENSOR, derive_seed

SAMPLING = "poisson"


class PrivacyAccountant:
    """(epsilon, delta) of T rounds of the Poisson-sampled Gaussian mechanism, by dp_accounting's RDP
    accountant (its default orders, add/remove adjacency).

    Every round is the same event, and RDP composes by adding: the accountant composes the event
    once, and T rounds are T x that RDP vector turned into (epsilon, delta) by the library's
    `compute_epsilon` -- what `RdpAccountant.compose(event, T)` does, without recomputing the
    event's RDP (seconds at q = 0.1) every round. Only the round count is state."""

    def __init__(self, sample_rate: float, noise_multiplier: float, delta: float) -> None:
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant

        self.q, self.z, self.delta = float(sample_rate), float(noise_multiplier), float(delta)
        self.event = dp_accounting.PoissonSampledDpEvent(self.q, dp_accounting.GaussianDpEvent(self.z))
        one = rdp_privacy_accountant.RdpAccountant()
        with _quiet_absl():
            one.compose(self.event)
        self._orders, self._rdp1 = np.asarray(one._orders), np.asarray(one._rdp)    # one round's RDP per order
        self._compute_epsilon = rdp_privacy_accountant.compute_epsilon
        self.rounds = 0

    def step(self, count: int = 1) -> None:
        self.rounds += max(int(count), 0)

    def epsilon(self) -> float:
        """epsilon at `delta` after the rounds so far (inf when z = 0; 0 before any round)."""
        if self.rounds == 0:
            return 0.0
        return float(self._compute_epsilon(self._orders, self.rounds * self._rdp1, self.delta)[0])


class _quiet_absl:
    """The library leaves out orders whose series does not converge (a looser, still valid bound) and
    logs one warning per order each time: keep that out of the run's output."""

    def __enter__(self):
        self.log = logging.getLogger("absl")
        self.level = self.log.level
        self.log.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.log.setLevel(self.level)


class DPFedAvg(FedAvgM):
    """`--strategy dp-fedavg`: clip to C, add the clipped updates, N(0, (zC)^2) on the sum, divide by
    the expected count, apply with the server learning rate / momentum."""

    name = "dp-fedavg"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.overcommit != 1.0:
            raise ConfigError("overcommit", f"{cfg.overcommit}: dp-fedavg samples each client with probability "
                              "per_round / clients and waits for those sampled", "1.0")
        if cfg.norm_bound:
            raise ConfigError("norm_bound", "dp-fedavg clips every update to --dp-clip already", "0")
        self.clip, self.z = float(cfg.dp_clip), float(cfg.dp_noise)
        self.q = cfg.per_round / cfg.clients
        self.accountant = PrivacyAccountant(self.q, self.z, cfg.dp_delta)
        self._clipped = 0
        self._rnd = 0

    # -- configure: Poisson sampling ----------------------------------------------------------------
    def select(self, rnd: int, candidates: list[int], policy) -> list[int]:
        """Each candidate independently with probability q (seeded only when --dp-noise-seed is set)."""
        seed = self.cfg.dp_noise_seed
        rng = np.random.default_rng([seed, 23, rnd] if seed >= 0 else secrets.randbits(128))
        pool = np.asarray(sorted(candidates), dtype=np.int64)
        return sorted(int(c) for c in pool[rng.random(len(pool)) < self.q])

    def should_close(self, view: RoundView) -> bool | float:
        return close_when_all(view)

    # -- aggregate ---------------------------------------------------------------------------------------
    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        super().begin_round(rnd, global_vec)
        self._clipped, self._rnd = 0, rnd

    def accept(self, result: Result) -> None:
        update = result.tensors.get(DEFAULT_TENSOR)
        if update is None:
            raise ValueError(f"result: dp-fedavg needs a {DEFAULT_TENSOR!r} tensor; got {sorted(result.tensors)}")
        update = update.reshape(-1)
        if not bool(torch.isfinite(update).all()):
            raise ValueError("update: holds NaN or Inf")
        bounded, norm = clip_to_norm(update, self.clip)
        metrics = {k: v for k, v in result.scalars.items() if k == "train_loss"}
        self.fold(bounded, 1, metrics)                       # unweighted: each client's sensitivity is C
        self._clipped += bounded is not update

    def noise(self, numel: int) -> torch.Tensor:
        """N(0, (z C)^2) per coordinate, float64."""
        seed = self.cfg.dp_noise_seed
        s = derive_seed(seed, "dp-noise", self._rnd) if seed >= 0 else secrets.randbits(63)
        g = torch.Generator().manual_seed(s)
        return torch.randn(numel, generator=g, dtype=torch.float64) * (self.z * self.clip)

    def finalize(self) -> tuple[torch.Tensor, dict[str, Any]]:
        assert self._open and self._global is not None, "finalize() before begin_round()"
        self._open = False
        self.accountant.step()                               # every round is charged
        n = self._sum.count
        total = self._sum.sum() + self.noise(self._sum.numel)
        step = (total / self.cfg.per_round).to(self._global.dtype)
        new = self.apply_step(step)
        metrics: dict[str, Any] = {k: v / max(self._sum.weight, 1) for k, v in self._metric_sums.items()}
        metrics.update({"aggregated": n, "dp_clipped": self._clipped, "dp_epsilon": self.accountant.epsilon(),
                        "dp_delta": self.accountant.delta, "dp_sampling": SAMPLING, "dp_sample_rate": self.q,
                        "dp_noise_multiplier": self.z, "dp_clip": self.clip})
        return new, metrics

    # -- persistence ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "dp_rounds": self.accountant.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.accountant = PrivacyAccountant(self.q, self.z, self.cfg.dp_delta)
        self.accountant.step(int(state.get("dp_rounds", 0)))


register("dp-fedavg", DPFedAvg)
