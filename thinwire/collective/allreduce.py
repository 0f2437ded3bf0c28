"""The step math of data-parallel training with compressed all-reduce: dense SGD, EF, DEF and
DEF-A (spec def.md), as tensors only (no processes).

Every step each worker

1. reads its model at the gradient point y (x for sgd/ef, x - c*e for def/defa),
2. takes a minibatch gradient and adds weight decay at y,
3. sgd: averages the gradient through the codec (identity by default: one dense all-reduce), then
   applies momentum SGD; none/ef/def/defa: updates its local momentum m, forms p = e + lr*m,
   averages C(p) over the group with the collective that fits the codec
   (`thinwire.collective.reducer`), keeps e' = p - C(p) and moves x <- x - mean_k C(p_k),
4. averages floating BatchNorm buffers in full precision.

Evaluation reads the shared model x (sgd, ef, def) or, for DEF-A, the averaged virtual iterate
x - mean_k e_k (spec "DEF-A (found)" section D; the paper's own DEF-A rule is not confirmed).

`WorkerState`, `prepare` and `finish` wrap one `Reducer` call, so the same code runs inside the
worker actors and in the K-worker simulation `simulate_step` used by tests; the DDP hook
(`thinwire.ddp`) uses the same `Reducer`. Schedules (`lr_at`), batches and the straggler pick are
pure functions of (seed, step, rank) here too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from thinwire.collective.config import METHODS
from thinwire.collective.reducer import Reduced, Reducer, simulate_mean
from thinwire.compression.base import Context
from thinwire.compression.feedback import Memory, make_memory
from thinwire.compression.randblock import Block, block_slices
from thinwire.errors import ConfigError


# -- pure schedule helpers ---------------------------------------------------------------------
def lr_at(step: int, *, base_lr: float, total_steps: int, steps_per_epoch: int,
          decay_at: Sequence[float] = (), decay: float = 0.1, warmup_epochs: float = 0.0) -> float:
    """Learning rate of (0-based) step: linear warm-up, then x decay at each fraction of training."""
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return base_lr * (step + 1) / warm
    drops = sum(1 for f in decay_at if step >= round(f * total_steps))
    return base_lr * decay ** drops


def steps_per_epoch(num_train: int, workers: int, batch_size: int) -> int:
    """Full global batches per epoch (the ragged tail is dropped, as DistributedSampler+drop_last)."""
    return num_train // (workers * batch_size)


def batch_indices(num_train: int, workers: int, batch_size: int, seed: int, step: int, rank: int) -> torch.Tensor:
    """Training-set indices of `rank`'s minibatch at `step`: a seeded per-epoch shuffle cut rank::K.

    The union over ranks is the global batch, which is what dense SGD must equal.
    """
    spe = steps_per_epoch(num_train, workers, batch_size)
    epoch, i = divmod(step, spe)
    perm = torch.randperm(num_train, generator=Context(seed=seed, round=epoch, shared=True).generator("shuffle"))
    mine = perm[rank::workers]
    return mine[i * batch_size:(i + 1) * batch_size]


def straggler_at(step: int, *, workers: int, seed: int, worker: int = -1, random_pick: bool = False) -> int:
    """Rank that straggles at `step` (-1 = none); a seeded draw all ranks agree on when random."""
    if random_pick:
        g = Context(seed=seed, round=step, shared=True).generator("straggler")
        return int(torch.randint(workers, (1,), generator=g).item())
    return worker


def step_blocks(segments: Sequence[int], ratio: float, seed: int, step: int) -> list[Block]:
    """The random blocks of every tensor at `step`; identical on all workers (shared seed)."""
    return block_slices(segments, ratio, Context(seed=seed, round=step, shared=True))


# -- per-worker state and the step math (no processes) -----------------------------------------
@dataclass
class WorkerState:
    """One worker's optimiser state over the flat parameter vector.

    x is the shared model (identical on every worker), m the momentum (local for none/ef/def/defa,
    the momentum of the mean gradient for sgd), `memory` the error-feedback residual e.
    """

    method: str
    x: torch.Tensor
    m: torch.Tensor
    memory: Memory | None

    @property
    def error(self) -> torch.Tensor:
        if self.memory is None or self.memory.residual is None:
            return torch.zeros_like(self.x)
        return self.memory.residual


def init_state(method: str, x0: torch.Tensor, coeff: float = 0.3) -> WorkerState:
    if method not in METHODS:
        raise ConfigError("method", f"unknown value {method!r}", ", ".join(METHODS))
    memory = None if method == "sgd" else make_memory(method, coeff=coeff if method in ("def", "defa") else 0.0)
    return WorkerState(method, x0.detach().clone(), torch.zeros_like(x0), memory)


def grad_point(state: WorkerState) -> torch.Tensor:
    """Where the gradient is taken: x (sgd, none, ef) or y = x - c*e (def, defa)."""
    return state.x if state.memory is None else state.memory.eval_point(state.x)


def prepare(state: WorkerState, grad: torch.Tensor, y: torch.Tensor, *, lr: float, momentum: float,
            weight_decay: float) -> torch.Tensor:
    """Local half of a step; returns the message p whose compressed mean the group forms.

    sgd: the gradient g + wd*y. none/ef/def/defa: m <- mu*m + g, p = e + lr*m.
    """
    g = grad + weight_decay * y if weight_decay else grad.clone()
    if state.memory is None:
        return g
    state.m.mul_(momentum).add_(g)
    return state.memory.message(state.m, lr)


def finish(state: WorkerState, p: torch.Tensor, reduced: Reduced, *, lr: float, momentum: float) -> None:
    """Shared half of a step, given this rank's `Reducer.mean` of p: keep e' = p - C(p), move x."""
    if state.memory is None:
        state.m.mul_(momentum).add_(reduced.mean)
        state.x.sub_(lr * state.m)
    else:
        if state.memory.keeps_residual:
            assert reduced.local is not None
            state.memory.update(p, reduced.local)
        else:
            state.memory.steps += 1
        state.x.sub_(reduced.mean)


def needs_local(state: WorkerState) -> bool:
    return state.memory is not None and state.memory.keeps_residual


def output_point(state: WorkerState, mean_error: torch.Tensor | None = None) -> torch.Tensor:
    """Model to evaluate: x, or x - mean_k e_k for DEF-A (needs the all-reduced mean residual)."""
    if state.memory is None:
        return state.x
    return state.memory.output_point(state.x, mean_error)


def simulate_step(states: Sequence[WorkerState], grad_fn: Callable[[int, torch.Tensor], torch.Tensor], *,
                  lr: float, momentum: float, weight_decay: float, reducer: Reducer, step: int,
                  segments: Sequence[int] | None = None) -> list[Reduced]:
    """One synchronous step of K workers in one process: what the process group computes."""
    ps = []
    for k, st in enumerate(states):
        y = grad_point(st)
        ps.append(prepare(st, grad_fn(k, y), y, lr=lr, momentum=momentum, weight_decay=weight_decay))
    reduced = simulate_mean(reducer, ps, step=step, segments=segments, need_local=needs_local(states[0]))
    for st, p, r in zip(states, ps, reduced):
        finish(st, p, r, lr=lr, momentum=momentum)
    return reduced
