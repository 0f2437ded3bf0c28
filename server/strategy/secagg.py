"""FedAvg over a secure sum (`--strategy secagg`): the server learns only the sum of a round's
updates, and the updates stay compressed on the wire (issue 23).

Each selected client trains, quantizes its delta onto the round's shared integer grid (shared
random block of `--secagg-ratio`, shared rotation, `--secagg-bits` stochastic rounding with
half-range `--secagg-clip`: thinwire.secagg.quantize) and takes part in the round's secure
aggregation (thinwire.secagg: pairwise + self masks mod 2^k over the SecAgg+ graph of degree
`--secagg-degree`, Shamir shares of the mask keys). The strategy receives only masked inputs,
hands them to the round's `SecAggSession`, and after the engine closed the round and the
survivors revealed their shares it decodes the one unmasked sum: one inverse rotation per round.

Server learning rate and momentum apply to the decoded mean as in fedavgm (post-processing).
The mean is unweighted over the survivors U2 (a sample count is a client's claim, and weighting
inside the masks would need every client to know the round's total). k = modulus_bits(b, n) for
the n clients selected, so the sum never wraps. Clients that drop out after their masks are fixed
(U1 minus U2: silent, gone, or later than the round's close) are unmasked from t shares each; a
round that cannot complete (too few clients, too few shares) leaves the model unchanged and says
why in `secagg_error`.
"""
from __future__ import annotations

from typing import Any

import torch

from thinwire.errors import ConfigError
from thinwire.secagg import wire
from thinwire.secagg.protocol import SecAggError
from thinwire.secagg.session import MIN_CLIENTS, SecAggSession
from thinwire.server.strategy.base import Result, RoundView
from thinwire.server.strategy.fedavg import FedAvg
from thinwire.server.strategy.registry import register
from thinwire.task import Task


def check_config(cfg) -> None:
    """The settings secure aggregation needs (called from RunConfig.validate after the range checks)."""
    if cfg.secagg_degree != 0 and (cfg.secagg_degree < 2 or cfg.secagg_degree % 2):
        raise ConfigError("secagg_degree", f"{cfg.secagg_degree}", "0 (complete graph) or an even number >= 2")
    if cfg.strategy != "secagg":
        return
    if cfg.selected_per_round < MIN_CLIENTS:
        raise ConfigError("per_round", f"{cfg.selected_per_round} clients per round; secure aggregation needs "
                          f"at least {MIN_CLIENTS}")
    for name, value, ok in (("codec", cfg.codec, "identity"), ("feedback", cfg.feedback, "none"),
                            ("attack", cfg.attack, "none")):
        if value != ok:
            raise ConfigError(name, f"{value!r} cannot be combined with --strategy secagg (its codec is the "
                              "--secagg-* integer grid, and the server never sees an update to inspect)", ok)
    if cfg.loss_policy == "holes":
        raise ConfigError("loss_policy", "holes: a masked input with lost chunks cannot be summed", "retransmit")


@register("secagg")
class SecAggFedAvg(FedAvg):
    name = "secagg"
    result_codecs = (wire.MASKED,)

    def __init__(self, cfg=None, **kw) -> None:
        kw.setdefault("server_momentum", cfg.server_momentum if cfg is not None else 0.0)
        super().__init__(cfg, **kw)
        self.session: SecAggSession | None = None
        self._tasks: dict[int, Task] = {}
        self._task: Task | None = None

    # -- configure ---------------------------------------------------------------------------
    def configure_client(self, rnd: int, client_id: int) -> Task:
        from thinwire.client.kinds import train_params

        fields = wire.task_fields(self.cfg, rnd, self.cfg.selected_per_round)
        task = Task.for_config(self.cfg, rnd, client_id, wire.KIND, **train_params(self.cfg, rnd), secagg=fields)
        self._tasks[client_id] = task
        return task

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        super().begin_round(rnd, global_vec)
        tasks = {c: t for c, t in self._tasks.items() if t.round == rnd}
        self._tasks = {}
        self._task = next(iter(tasks.values()), None)
        self.session = None
        if self._task is not None:
            self.session = SecAggSession(wire.params_of(self._task, global_vec.numel()), sorted(tasks),
                                         timeout=self.cfg.secagg_timeout)

    def _sum_up_front(self) -> bool:
        return False                  # the session holds the round's (masked) sum; no plain sum is needed

    def round_session(self) -> SecAggSession | None:
        return self.session

    # -- aggregate ---------------------------------------------------------------------------
    def folds_encoded(self, name: str, enc: Any) -> bool:
        return True                   # nothing of a secure round is decoded one client at a time

    def check_header(self, task: Task, items, model_numel: int) -> None:
        if self.session is None:
            raise ValueError("update: no secure-aggregation round is open")
        p = self.session.params
        if len(items) != 1 or items[0][1] != wire.MASKED or items[0][2] != p.count:
            raise ValueError(f"update: a secure-aggregation round takes one {wire.MASKED!r} input of {p.count} "
                             f"values; got {[(n, c, k) for n, c, k, _ in items]}")

    def max_result_bytes(self, model_numel: int) -> int | None:
        return 4 * model_numel + (1 << 20)

    def accept(self, result: Result) -> None:
        if self.session is None:
            raise ValueError("update: no secure-aggregation round is open")
        if result.tensors or len(result.encoded) != 1:
            raise ValueError(f"update: a secure-aggregation round takes one masked input; got "
                             f"{sorted(result.tensors) + sorted(result.encoded)}")
        enc = next(iter(result.encoded.values()))
        try:
            self.session.take_masked(result.client_id, wire.masked_bytes(enc, self.session.params))
        except SecAggError as e:
            raise ValueError(str(e)) from None
        if "train_loss" in result.scalars:
            self._add_metrics({"train_loss": result.scalars["train_loss"]}, 1)     # unweighted, as the mean

    def lost(self, client_id: int) -> None:
        if self.session is not None:
            self.session.drop(client_id)

    def should_close(self, view: RoundView) -> bool | float:
        """Close once the first K masked inputs are in, or every client of U1 delivered or left;
        never while keys are still being exchanged (the deadline still closes the round)."""
        s = self.session
        if s is None:
            return super().should_close(view)
        if s.error is not None:
            return True
        u1 = s.u1
        if u1 is None:
            return False
        if len(view.arrived) >= view.per_round:
            return True
        return all(c in view.arrived or c in view.lost for c in u1)

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        s, task = self.session, self._task
        self._open = False
        if s is None or task is None:
            return self._global.clone(), {"aggregated": 0}
        metrics: dict[str, Any] = {}
        try:
            total = s.finish()
        except SecAggError as e:
            metrics.update(s.metrics(), aggregated=0, secagg_error=str(e))
            return self._global.clone(), metrics
        u2 = s.survivors() or []
        step = wire.decode_sum(total, task, self._global.numel()).div_(len(u2))
        new = self.apply_step(step.to(self._global.dtype))
        metrics.update(s.metrics(), aggregated=len(u2))
        metrics.update({k: v / len(u2) for k, v in self._metric_sums.items()})
        return new, metrics
