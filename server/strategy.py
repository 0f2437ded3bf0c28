"""Strategies: what each selected client is asked to do, how results are folded into the next
global model, and when a round may close.

Flower-shaped (configure / aggregate) but per client and incremental: `configure_client` builds
each client's own task, `accept` folds each result the moment it arrives (server memory does not
grow with the number of clients in a round), and `should_close` lets the strategy own its closing
rule (first K, all, "decodable"), combined by the round engine with the policy's deadline.
Built-ins: `fedavg` (plain FedAvg, what Flower calls FedAvg) and `fedavgm` (with server momentum).
Others register themselves (`register`) or are named as `package.module:Class`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from thinwire.task import DEFAULT_TENSOR, Task

from .exact_sum import ExactSum



@dataclass
class Result:
    """One client's decoded result as a strategy sees it."""
    client_id: int
    round: int                  # the round whose task produced it
    job: int                    # == round unless the task named an earlier job
    task: Task
    tensors: dict[str, torch.Tensor]
    scalars: dict[str, float]
    time: float = 0.0           # arrival, seconds after its round started (virtual or wall clock)

    @property
    def num_samples(self) -> int:
        return int(self.scalars.get("num_samples", 0))


@dataclass
class RoundView:
    """What a closing rule sees: the round so far."""
    round: int
    selected: list[int]
    arrived: dict[int, float]   # accepted this round: client -> arrival time
    lost: set[int] = field(default_factory=set)
    now: float = 0.0
    per_round: int = 1

    @property
    def outstanding(self) -> list[int]:
        return [c for c in self.selected if c not in self.arrived and c not in self.lost]


class Strategy:
    """Base class: the defaults give synchronous FedAvg-shaped rounds of `train` tasks."""

    name = "base"
    #: accept results of jobs up to this many rounds old (delayed jobs, gradient coding)
    max_delay = 0

    def __init__(self, cfg=None) -> None:
        self.cfg = cfg

    # -- configure ---------------------------------------------------------------------------
    def select(self, rnd: int, candidates: list[int], policy) -> list[int]:
        """Which clients take part in round `rnd` (default: the policy's seeded sample)."""
        return policy.select(rnd, candidates)

    def configure_client(self, rnd: int, client_id: int) -> Task:
        """The task of one selected client (default: local training, send the delta)."""
        from thinwire.client.kinds import train_params  # the train kind's field names live with the kind
        return Task.for_config(self.cfg, rnd, client_id, "train", **train_params(self.cfg, rnd))

    def broadcast(self, rnd: int, global_vec: torch.Tensor) -> torch.Tensor:
        """The flat vector clients download this round (default: the global model)."""
        return global_vec

    def check_header(self, task: Task, items: list[tuple[str, str, int, bool]], model_numel: int) -> None:
        """Early check of a result's header (name, codec, numel, model_shaped per tensor) before its
        body is read; raises ValueError. Default: model-shaped tensors have the model's size."""
        for name, _codec, numel, model_shaped in items:
            if model_shaped and numel != model_numel:
                raise ValueError(f"update: tensor {name!r} has {numel} elements, the model has {model_numel}")

    def max_result_bytes(self, model_numel: int) -> int | None:
        """Upper bound on one client's serialised result (bytes), for strategies whose results are
        not model-sized; the served parameter server uses it as its default per-push limit (an
        explicit --max-update-mb still wins). None: the server's default for model deltas."""
        return None

    # -- aggregate ---------------------------------------------------------------------------
    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        raise NotImplementedError

    def accept(self, result: Result) -> None:
        """Fold one result in. Its tensors may view the sender's receive buffer (zero-copy decode):
        clone whatever is kept after returning. Raises ValueError, before changing any state, for a result it cannot
        use (wrong shape, NaN or Inf, a value that would overflow the sum): the served mode refuses
        that push and the round goes on."""
        raise NotImplementedError

    def should_close(self, view: RoundView) -> bool | float:
        """True: close now; False: keep waiting; a float t: close at time t unless something arrives
        first. The engine also closes at the deadline and when nobody is outstanding.
        Default: first K (the policy's per_round)."""
        return len(view.arrived) >= view.per_round

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate_vec(self, global_vec: torch.Tensor) -> torch.Tensor:
        """The flat model to evaluate after a round (default: the global vector)."""
        return global_vec

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def close_when_all(view: RoundView) -> bool:
    """The synchronous rule: every selected client has delivered (or is gone)."""
    return not view.outstanding


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


# -- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[[Any], Strategy]] = {"fedavg": FedAvg, "fedavgm": FedAvgM}
#: built-in strategies defined in their own modules, imported on first use: name -> module
BUILTIN_MODULES: dict[str, str] = {"ntk": "thinwire.server.ntk_strategy",
                                   **{name: "thinwire.server.sgc_strategy" for name in ("uncoded", "gc", "sr-sgc", "m-sgc")}}


def register(name: str, factory: Callable[[Any], Strategy] | None = None):
    """Register a strategy factory `factory(cfg) -> Strategy` under `name` (also a decorator)."""
    def add(f):
        _REGISTRY[name] = f
        return f
    return add(factory) if factory is not None else add


def available() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILTIN_MODULES))


def make_strategy(cfg) -> Strategy:
    """The run's strategy: a registered name or `package.module:Class` (called with the config)."""
    from thinwire.errors import ConfigError
    from thinwire.plugins import load_object

    name = cfg.strategy
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        import importlib
        importlib.import_module(BUILTIN_MODULES[name])
    if name in _REGISTRY:
        return _REGISTRY[name](cfg)
    if ":" in name:
        try:
            cls = load_object(name)
        except ValueError as e:
            raise ConfigError("strategy", str(e)) from None
        strategy = cls(cfg)
        if not isinstance(strategy, Strategy):
            raise ConfigError("strategy", f"{name} is not a thinwire.server.strategy.Strategy subclass")
        return strategy
    raise ConfigError("strategy", f"unknown strategy {name!r}", ", ".join(available()) + " or package.module:Class")
