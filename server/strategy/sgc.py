"""Sequential gradient coding as round-engine strategies: `uncoded`, `gc`, `sr-sgc`, `m-sgc`.

Every worker takes part in every round. The scheme state (`sgc_schemes`) plans each worker's
units (job, code group, row); the worker sends the coded combination of its rows' partial
gradients (`coded_gradient` task kind). A round closes at (1 + mu) x the first arrival when the
scheme tolerates the workers not in by then, otherwise it waits for everyone (a "wait"). Each
job that becomes decodable is decoded exactly from the buffered messages and applied as one SGD
step to model (job mod M): M models train round-robin, so a job decoding up to T <= M - 1 rounds
late still used its model's current weights. The broadcast holds all M models back to back.

Server memory: the messages of at most T + 1 jobs in flight, O(n x slots x (T + 1) x model).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from thinwire.errors import ConfigError
from thinwire.task import Task, derive_seed

from thinwire.coding.schemes import Plan, Scheme, layout_bounds, make_scheme, unit_segments
from thinwire.server.strategy import Result, RoundView, Strategy, register

SCHEMES = ("uncoded", "gc", "sr-sgc", "m-sgc")


def check_config(cfg) -> None:
    """The settings a gradient coding run needs (RunConfig.validate calls this); ConfigError names the field."""
    n = cfg.clients
    if cfg.per_round != n:
        raise ConfigError("per_round", f"gradient coding uses every worker every round; got {cfg.per_round} of {n}",
                          f"--per-round {n} (= --clients)")
    if cfg.deadline > 0:
        raise ConfigError("deadline", "gradient coding closes its rounds itself (mu and the straggler model)", "0")
    name, B, W, lam = cfg.strategy, cfg.sgc_b, cfg.sgc_w, cfg.sgc_lambda
    if name == "gc":
        if not 0 <= cfg.gc_s < n:
            raise ConfigError("gc_s", f"{cfg.gc_s} stragglers of {n} workers", f"0..{n - 1}")
        if cfg.gc_code == "fractional" and n % (cfg.gc_s + 1):
            raise ConfigError("gc_s", f"fractional repetition needs s+1 to divide clients={n} (s={cfg.gc_s})",
                              "s with (s+1) dividing clients, or --gc-code cyclic")
    if name in ("sr-sgc", "m-sgc"):
        if lam > n:
            raise ConfigError("sgc_lambda", f"{lam} exceeds clients={n}", f"1..{n}")
        if W <= B:
            raise ConfigError("sgc_w", f"window {W} must exceed the burst length B={B}", f"> {B}")
        if name == "sr-sgc" and (W - 1) % B:
            raise ConfigError("sgc_w", f"sr-sgc needs W - 1 to be a multiple of B={B} (got W={W})",
                              ", ".join(str(B * k + 1) for k in range(1, 4)) + ", ...")
    T = delay_of(cfg)
    if cfg.rounds <= T:
        raise ConfigError("rounds", f"{cfg.rounds} rounds leave no job: the scheme decodes up to T={T} rounds late",
                          f"> {T}")
    if cfg.models and cfg.models < T + 1:
        raise ConfigError("models", f"{cfg.models} models with delay T={T}: a job would start from weights a later "
                          "job has not updated yet", f">= {T + 1} (or 0 = T + 1)")


def delay_of(cfg) -> int:
    """The scheme's delay T (rounds a job may decode late)."""
    return {"sr-sgc": cfg.sgc_b, "m-sgc": cfg.sgc_w - 2 + cfg.sgc_b}.get(cfg.strategy, 0)


def scheme_for(cfg) -> Scheme:
    """The run's scheme; it computes rounds - T jobs, so every job decodes by the last round."""
    return make_scheme(cfg.strategy, cfg.clients, cfg.rounds - delay_of(cfg), s=cfg.gc_s, B=cfg.sgc_b, W=cfg.sgc_w,
                       lam=cfg.sgc_lambda, seed=cfg.seed, code=cfg.gc_code)


class CodedGradients(Strategy):
    """One of the four schemes (by `cfg.strategy`), trained with exactly decoded gradients."""

    max_delay = 0          # a straggler's late message is an erasure: the scheme repeats or codes around it

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        check_config(cfg)
        self.name = cfg.strategy
        self.scheme = scheme_for(cfg)
        self.n, self.T = cfg.clients, self.scheme.T
        self.M = cfg.models or self.T + 1
        self.batch = cfg.job_batch
        self.bounds = layout_bounds(self.scheme, self.batch)
        self.job_seed = derive_seed(cfg.seed, "sgc-job") & 0x7FFFFFFF
        self.d: int | None = None
        self.models: torch.Tensor | None = None          # (M, d) float32
        self.velocity: torch.Tensor | None = None        # (M, d) float64, when momentum > 0
        self.messages: dict[tuple[int, int, int], torch.Tensor] = {}   # (job, group, row) -> float64 (d + 1)
        self.waits = 0
        self.last_model = 0
        self._plan: Plan | None = None
        self._round = -1
        self._arrived: list[int] = []
        self._decision: str | None = None               # None: not yet; "cut": closed without stragglers; "wait"

    # -- configure -------------------------------------------------------------------------------
    def select(self, rnd: int, candidates: list[int], policy) -> list[int]:
        return sorted(candidates)

    def plan(self, rnd: int) -> Plan:
        if self._plan is None or self._plan.round != rnd:
            self._plan = self.scheme.plan(rnd)
        return self._plan

    def configure_client(self, rnd: int, client_id: int) -> Task:
        plan, units = self.plan(rnd), []
        if client_id < self.n:
            for m in range(self.scheme.slots):
                t = int(plan.job[client_id, m])
                if t < 0:
                    continue
                g, row = int(plan.group[client_id, m]), int(plan.row[client_id, m])
                segs = [[lo, hi, c] for lo, hi, c in unit_segments(self.scheme, self.bounds, g, row)]
                units.append({"slot": m, "job": t, "model": t % self.M, "group": g, "row": row, "segments": segs})
        return Task.for_config(self.cfg, rnd, client_id, "coded_gradient", models=self.M, batch=self.batch,
                               job_seed=self.job_seed, load=self.scheme.load, units=units, abandon_late=True)

    def max_result_bytes(self, model_numel: int) -> int:
        """One result's bound: a float32 hi/lo pair of (model + loss) per slot, plus 1 MiB of framing."""
        return self.scheme.slots * 2 * 4 * (model_numel + 1) + (1 << 20)

    def broadcast(self, rnd: int, global_vec: torch.Tensor) -> torch.Tensor:
        return self.models.reshape(-1)

    # -- aggregate -------------------------------------------------------------------------------
    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        g = global_vec.detach().float().reshape(-1)
        if self.d is None:
            self.d = g.numel()
        if g.numel() == self.M * self.d:
            self.models = g.reshape(self.M, self.d).clone()
        elif g.numel() == self.d:
            self.models = g.repeat(self.M, 1)           # M replicas of the initial model
        else:
            raise ValueError(f"{self.name}: model vector of {g.numel()} values, expected {self.d} or {self.M} x {self.d}")
        self.plan(rnd)
        self._round, self._arrived, self._decision = rnd, [], None

    def accept(self, result: Result) -> None:
        from thinwire.coding.jobs import join_hi_lo, unit_tensor_name

        staged = []
        for u in result.task.params["units"]:
            name = unit_tensor_name(u["slot"])
            t = result.tensors.get(name)
            if t is None or t.numel() != 2 * (self.d + 1):
                raise ValueError(f"result: {self.name} needs tensor {name!r} of 2 x {self.d + 1} values")
            msg = join_hi_lo(t)                         # a new tensor: nothing views the receive buffer
            if not bool(torch.isfinite(msg).all()):
                raise ValueError(f"result: tensor {name!r} holds NaN or Inf")
            staged.append(((int(u["job"]), int(u["group"]), int(u["row"])), msg))
        for key, msg in staged:
            self.messages.setdefault(key, msg)
        self._arrived.append(result.client_id)

    def should_close(self, view: RoundView) -> bool | float:
        """(1 + mu) x first arrival: close if the scheme tolerates who is missing, else wait for all."""
        if self._decision == "wait" or not view.arrived:
            return False
        cut = (1.0 + self.cfg.mu) * min(view.arrived.values())
        if view.now < cut:
            return cut
        strag = np.ones(self.n, dtype=bool)
        strag[[c for c in view.arrived if c < self.n]] = False
        if self.scheme.tolerable(view.round, self.plan(view.round), strag):
            self._decision = "cut"
            return True
        self._decision = "wait"
        self.waits += 1
        return False

    def finalize(self) -> tuple[torch.Tensor, dict[str, Any]]:
        plan = self.plan(self._round)
        received = np.zeros(self.n, dtype=bool)
        order = np.array([c for c in self._arrived if c < self.n], dtype=np.int64)
        received[order] = True
        strag = ~received if self._decision == "cut" else np.zeros(self.n, dtype=bool)
        newly = self.scheme.record(plan, received, order, stragglers=strag)
        losses = []
        for t in newly:
            losses.append(self._apply_job(t))
            self.scheme.release(t)
            for key in [k for k in self.messages if k[0] == t]:
                del self.messages[key]
        metrics: dict[str, Any] = {
            "aggregated": len(newly), "decoded_jobs": newly, "waited": self._decision == "wait",
            "waits": self.waits, "sgc_stragglers": int(strag.sum()), "messages_buffered": len(self.messages),
            "train_loss": float(np.mean(losses)) if losses else None}
        return self.models.reshape(-1).clone(), metrics

    def _apply_job(self, t: int) -> float:
        """Decode job t (sum of coefficient x message over the rows each group uses) and step its model."""
        total = torch.zeros(self.d + 1, dtype=torch.float64)
        for g, rows, coefs, _src in self.scheme.decode(t):
            for row, a in zip(rows.tolist(), coefs.tolist()):
                total.add_(self.messages[(t, g, row)], alpha=a)
        grad, loss = total[:-1], float(total[-1])
        m, cfg = t % self.M, self.cfg
        w = self.models[m].double()
        if cfg.weight_decay:
            grad = grad + cfg.weight_decay * w
        if cfg.momentum:
            if self.velocity is None:
                self.velocity = torch.zeros(self.M, self.d, dtype=torch.float64)
            self.velocity[m].mul_(cfg.momentum).add_(grad)
            grad = self.velocity[m]
        lr = cfg.lr * cfg.lr_decay ** (t // self.M)
        self.models[m] = (w - lr * grad).float()
        self.last_model = m
        return loss

    def evaluate_vec(self, global_vec: torch.Tensor) -> torch.Tensor:
        """The model the latest decoded job stepped."""
        return global_vec.reshape(self.M, -1)[self.last_model] if global_vec.numel() == self.M * (self.d or 0) \
            else global_vec

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        keys = sorted(self.messages)
        return {"d": self.d, "scheme": self.scheme.state_dict(), "waits": self.waits, "last_model": self.last_model,
                "velocity": self.velocity, "message_keys": torch.tensor(keys, dtype=torch.int64).reshape(-1, 3),
                "messages": torch.stack([self.messages[k] for k in keys]) if keys else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d = state["d"]
        self.scheme.load_state_dict(state["scheme"])
        self.waits, self.last_model, self.velocity = state["waits"], state["last_model"], state["velocity"]
        keys = state["message_keys"].tolist()
        self.messages = {tuple(k): state["messages"][i].clone() for i, k in enumerate(keys)}
        self._plan = None


for _name in SCHEMES:
    register(_name, CodedGradients)
