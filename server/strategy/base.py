"""The strategy contract: what each selected client is asked to do, how results are folded into the
next global model, and when a round may close.

Flower-shaped (configure / aggregate) but per client and incremental: `configure_client` builds each
client's own task, `accept` folds each result the moment it arrives (server memory does not grow
with the fleet), `should_close` owns the closing rule and `finalize` returns the next model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from thinwire.task import Task


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
    encoded: dict[str, Any] = field(default_factory=dict)   # tensors the strategy folds encoded (issue 21)

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
    carried: dict[int, int] = field(default_factory=dict)   # started in an earlier step, still due: client -> round
    late: dict[int, float] = field(default_factory=dict)    # results of earlier rounds accepted this round

    @property
    def outstanding(self) -> list[int]:
        return [c for c in self.selected if c not in self.arrived and c not in self.lost] + \
            [c for c in self.carried if c not in self.late and c not in self.lost]


class Strategy:
    """Base class: the defaults give synchronous FedAvg-shaped rounds of `train` tasks."""

    name = "base"
    #: accept results of jobs up to this many rounds old (delayed jobs, gradient coding)
    max_delay = 0
    #: asynchronous strategies (FedBuff): a client's work may span several rounds (server steps);
    #: the engine keeps the clients `in_flight()` reports open across rounds until they deliver
    spans_steps = False
    #: codecs a result may arrive in besides the run's codec and identity (secure aggregation's masked inputs)
    result_codecs: tuple[str, ...] = ()

    def __init__(self, cfg=None) -> None:
        self.cfg = cfg

    # -- configure ---------------------------------------------------------------------------
    def select(self, rnd: int, candidates: list[int], policy) -> list[int]:
        """Which clients take part in round `rnd` (default: the policy's seeded sample)."""
        return policy.select(rnd, candidates)

    def configure_client(self, rnd: int, client_id: int) -> Task:
        """The task of one selected client (default: local training, send the delta)."""
        from thinwire.client.kinds import train_params  # the train kind's field names live with the kind
        from thinwire.client.kinds.attack import attack_params   # --attack: simulated malicious clients
        evil = attack_params(self.cfg, client_id)
        if evil:
            return Task.for_config(self.cfg, rnd, client_id, "attack", **train_params(self.cfg, rnd), **evil)
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
    def folds_encoded(self, name: str, enc: Any) -> bool:
        """True: hand this tensor of a result to `accept` still encoded (in `Result.encoded`, an
        `Encoded`), not decoded into `Result.tensors` (e.g. EDEN summed in the rotated domain)."""
        return False

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

    def round_session(self) -> Any:
        """An exchange the round's clients take part in beside their tasks, which the transport
        serves and completes after the round closes (secure aggregation's key exchange and
        unmasking: thinwire.secagg.session.SecAggSession); None for plain rounds."""
        return None

    def in_flight(self) -> dict[int, int]:
        """Clients still working on a task (client -> its round), for `spans_steps` strategies."""
        return {}

    def lost(self, client_id: int) -> None:
        """A client's task will not deliver (the client is gone, or its result was refused for good)."""

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
