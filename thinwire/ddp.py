"""A DistributedDataParallel communication hook for any thinwire codec, with error feedback.

    hook, state = thinwire.ddp.comm_hook(codec="eden:bits=2", feedback="def", coeff=0.3, model=model)
    ddp_model.register_comm_hook(state, hook)

Per gradient bucket the hook forms p = e + g (e: this rank's residual of the bucket's tensors),
averages C(p) over the group through `thinwire.reducer.Reducer` (the same code as `thinwire
allreduce`: random blocks -> one all-reduce, EDEN -> all-gather + one inverse rotation, others ->
all-gather), keeps e' = p - C(p) and hands DDP the mean. Residuals live in `HookState`, keyed by
parameter, so DDP's bucket rebuild after the first iteration does not scramble them. Randomness is
seeded from (seed, step, bucket index); the per-tensor order inside a bucket is the model's
parameter order when `model` is given (so random blocks do not depend on DDP's bucketing).

Errors are in gradient units (the optimizer applies lr afterwards, as in PowerSGD's hook). DEF
evaluates the gradient at y = x - c * lr * e: wrap forward+backward in `state.detached(model, lr)`;
outside it the model holds x, which is what the optimizer steps and what is evaluated.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .errors import ConfigError
from .reducer import DistComm, Reducer

HOOK_FEEDBACKS = ("none", "ef", "def")


@dataclass
class HookState:
    """What persists between hook calls: the reducer, residuals per parameter, counters."""

    reducer: Reducer
    feedback: str = "def"
    coeff: float = 0.3
    process_group: Any = None
    order: dict[int, int] | None = None  # id(param) -> position in model.parameters()
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    payload_bytes: int = 0      # total bytes this rank put into collectives
    wire_bytes: float = 0.0     # total bytes a ring algorithm made this rank send
    last_step_bytes: int = 0    # payload bytes of the last finished step (all buckets)
    _step_bytes: int = 0

    def residual(self, param: torch.nn.Parameter) -> torch.Tensor | None:
        return self.errors.get(id(param))

    @contextlib.contextmanager
    def detached(self, model: torch.nn.Module, lr: float) -> Iterator[None]:
        """DEF: parameters hold y = x - coeff * lr * e inside the block, x again after it."""
        if self.feedback != "def" or self.coeff == 0 or not self.errors:
            yield
            return
        saved = []
        with torch.no_grad():
            for p in model.parameters():
                e = self.errors.get(id(p))
                if e is not None:
                    saved.append((p, p.detach().clone()))
                    p.sub_(e.view_as(p), alpha=self.coeff * lr)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, x in saved:
                    p.copy_(x)


def comm_hook(codec: str = "eden:bits=2", feedback: str = "def", coeff: float = 0.3, *, seed: int = 0,
              model: torch.nn.Module | None = None, process_group: Any = None) -> tuple[Any, HookState]:
    """(hook, state) for `DistributedDataParallel.register_comm_hook(state, hook)`."""
    if feedback not in HOOK_FEEDBACKS:
        raise ConfigError("feedback", f"unknown value {feedback!r}", ", ".join(HOOK_FEEDBACKS))
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not 0.0 <= coeff <= 1.0:
        raise ConfigError("coeff", f"got {coeff!r}", "a number in [0, 1]")
    order = None
    if model is not None:
        order = {id(p): i for i, p in enumerate(model.parameters())}
    state = HookState(Reducer(codec, seed=seed), feedback=feedback, coeff=float(coeff),
                      process_group=process_group, order=order)
    return compressed_hook, state


def compressed_hook(state, bucket):  # no annotations: DDP checks them against its own types
    """DDP comm hook: mean over ranks of C(e + g) for this bucket (a dist.GradBucket); e updated in `state`."""
    if state.reducer.comm is None:
        state.reducer.comm = DistComm(state.process_group)
    params = list(bucket.parameters())
    grads = list(bucket.gradients())
    idx = list(range(len(params)))
    if state.order is not None:
        idx.sort(key=lambda i: state.order.get(id(params[i]), len(state.order) + i))
    keep = state.feedback != "none"
    parts = []
    for i in idx:
        g = grads[i].reshape(-1)
        e = state.errors.get(id(params[i])) if keep else None
        parts.append(g + e if e is not None else g)
    p = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
    segments = [t.numel() for t in parts]
    red = state.reducer.mean(p, step=state.step, bucket=bucket.index(), segments=segments, need_local=keep)
    if keep:
        res = p - red.local
        pos = 0
        for i, n in zip(idx, segments):
            state.errors[id(params[i])] = res[pos:pos + n]
            pos += n
    # back to the bucket's own layout
    pieces: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
    pos = 0
    for i, n in zip(idx, segments):
        pieces[i] = red.mean[pos:pos + n]
        pos += n
    buf = bucket.buffer()
    out = torch.cat(pieces).to(buf.dtype) if len(pieces) > 1 else pieces[0].to(buf.dtype)
    state.payload_bytes += red.payload_bytes
    state.wire_bytes += red.wire_bytes
    state._step_bytes += red.payload_bytes
    if bucket.is_last():
        state.last_step_bytes, state._step_bytes = state._step_bytes, 0
        state.step += 1
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(out.view_as(buf) if out.numel() == buf.numel() else out)
    return fut


__all__ = ["comm_hook", "compressed_hook", "HookState", "HOOK_FEEDBACKS"]
