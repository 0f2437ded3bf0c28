"""A DistributedDataParallel communication hook for any thinwire codec, with error feedback.

The hook implements the update rule of `thinwire allreduce` (DEF spec def.md §4-5) inside a
user's own DDP loop. Per parameter, with y the point where the gradient was taken:

    g = grad(y) + wd * y          weight decay of the hook (`weight_decay`)
    m = mu * m + g                local momentum of the hook (`momentum`), *before* compression
    p = e + lr * m                the learning rate sits inside the residual
    D = mean_k C(p_k)             `thinwire.collective.reducer.Reducer`, the same code as `thinwire allreduce`
    e = p - C(p)                  kept in `HookState`, keyed by parameter
    x = x - D                     the hook hands DDP D / lr, plain SGD(lr) applies x - lr * (D / lr)

So the optimizer must be plain SGD (no momentum, no weight decay: they are the hook's), and the
learning rate reaches the hook through the step context, which also moves DEF's parameters to the
detached point y = x - c * e during forward and backward:

    hook, state = thinwire.ddp.comm_hook(codec="randblock:ratio=32", feedback="def", coeff=0.3,
                                         momentum=0.9, weight_decay=5e-4, model=model)
    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)      # momentum/weight decay live in the hook
    for x, y in loader:
        opt.zero_grad()
        with state.step_context(opt):                       # reads lr per param group; DEF: params = y
            loss_fn(ddp(x), y).backward()
        opt.step()
    with state.output_point():                              # DEF-A: params = x - mean_k e_k
        evaluate(model)

Why: torch's own SGD momentum would act on the sparse compressed mean *after* compression (and
weight decay outside it), which is not the DEF/EF rule; with random blocks it trained far worse
(docs/BENCHMARKS.md, bench ddp). Like PowerSGD's hook, the hook states its constraint on the
optimizer; `step_context` refuses an optimizer that breaks it with a one-line ConfigError.

Without a step context the hook works in gradient units (lr = 1, the optimizer applies lr): the
rule above for a constant learning rate, enough for feedback none/ef (e.g. EDEN without feedback
and torch's momentum, an unbiased compressed gradient). DEF and DEF-A need the context.

Randomness is seeded from (seed, step, bucket index); the per-tensor order inside a bucket is the
model's parameter order when `model` is given (random blocks do not depend on DDP's bucketing).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from thinwire.errors import ConfigError
from thinwire.collective.reducer import DistComm, Reducer

HOOK_FEEDBACKS = ("none", "ef", "def", "defa")
NEEDS_LR = ("def", "defa")  # residuals must be in parameter units: the detached / output point


@dataclass
class HookState:
    """What persists between hook calls: the reducer, residuals and momenta per parameter, counters."""

    reducer: Reducer
    feedback: str = "def"
    coeff: float = 0.3
    momentum: float = 0.0
    weight_decay: float = 0.0
    process_group: Any = None
    order: dict[int, int] | None = None  # id(param) -> position in model.parameters()
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    momenta: dict[int, torch.Tensor] = field(default_factory=dict)
    params: dict[int, torch.nn.Parameter] = field(default_factory=dict)
    lrs: dict[int, float] | None = None  # id(param) -> lr of the last step context (None: gradient units)
    step: int = 0
    payload_bytes: int = 0      # total bytes this rank put into collectives
    wire_bytes: float = 0.0     # total bytes a ring algorithm made this rank send
    last_step_bytes: int = 0    # payload bytes of the last finished step (all buckets)
    _step_bytes: int = 0

    def residual(self, param: torch.nn.Parameter) -> torch.Tensor | None:
        return self.errors.get(id(param))

    @property
    def owns_the_step(self) -> bool:
        """True when the hook applies the update rule (residuals or hook-side momentum / weight
        decay) and the optimizer must be plain SGD; False for a plain compressed gradient."""
        return self.feedback != "none" or self.momentum > 0 or self.weight_decay > 0

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """One-line ConfigError unless `optimizer` applies exactly x - lr * (what the hook returns)."""
        if not self.owns_the_step:
            return  # a compressed gradient (unbiased for EDEN): any optimizer may use it
        if type(optimizer) is not torch.optim.SGD:
            raise ConfigError("optimizer", f"{type(optimizer).__name__} with feedback {self.feedback!r}",
                              "torch.optim.SGD (momentum and weight decay go to comm_hook)")
        for i, group in enumerate(optimizer.param_groups):
            for key in ("momentum", "weight_decay"):
                if float(group.get(key, 0.0)) != 0.0:
                    raise ConfigError(f"optimizer.param_groups[{i}].{key}",
                                      f"{group[key]} would act after compression (not the EF/DEF rule)",
                                      f"0, and comm_hook({key}=...) instead")
            if float(group["lr"]) <= 0.0:
                raise ConfigError(f"optimizer.param_groups[{i}].lr", f"got {float(group['lr'])}",
                                  "a positive learning rate (the hook divides by it)")

    @contextlib.contextmanager
    def step_context(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Wrap one step's forward and backward: hands the hook each parameter's lr and, for DEF,
        holds y = x - coeff * e in the parameters (x again afterwards, for opt.step and evaluation)."""
        self.check_optimizer(optimizer)
        if not self.owns_the_step:  # gradient units: the optimizer applies lr (and may be anything)
            yield
            return
        self.lrs = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
        if self.feedback not in NEEDS_LR or self.coeff == 0 or not self.errors:
            yield
            return
        with self._shifted({k: e.mul(self.coeff) for k, e in self.errors.items()}):
            yield

    @contextlib.contextmanager
    def output_point(self) -> Iterator[None]:
        """The model to evaluate or save: DEF-A's x - mean_k e_k inside the block (one full-precision
        all-reduce of the residuals; every rank must enter it), x for the other feedbacks."""
        if self.feedback != "defa" or not self.errors:
            yield
            return
        import torch.distributed as dist
        keys = sorted(self.errors, key=lambda k: self.order.get(k, 0) if self.order else 0)
        flat = torch.cat([self.errors[k] for k in keys])
        dist.all_reduce(flat, group=self.process_group)
        flat.div_(dist.get_world_size(self.process_group))
        shifts, pos = {}, 0
        for k in keys:
            n = self.errors[k].numel()
            shifts[k] = flat[pos:pos + n]
            pos += n
        with self._shifted(shifts):
            yield

    @contextlib.contextmanager
    def _shifted(self, shifts: dict[int, torch.Tensor]) -> Iterator[None]:
        saved = []
        with torch.no_grad():
            for k, s in shifts.items():
                p = self.params[k]
                saved.append((p, p.detach().clone()))
                p.sub_(s.view_as(p))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, x in saved:
                    p.copy_(x)


def comm_hook(codec: str = "eden:bits=2", feedback: str = "def", coeff: float = 0.3, *, momentum: float = 0.0,
              weight_decay: float = 0.0, seed: int = 0, model: torch.nn.Module | None = None,
              process_group: Any = None) -> tuple[Any, HookState]:
    """(hook, state) for `DistributedDataParallel.register_comm_hook(state, hook)`.

    momentum / weight_decay: applied by the hook before compression (the EF/DEF rule); give the
    optimizer neither. DEF and DEF-A need `with state.step_context(optimizer):` around each step's
    forward and backward; DEF-A outputs the model inside `with state.output_point():`."""
    if feedback not in HOOK_FEEDBACKS:
        raise ConfigError("feedback", f"unknown value {feedback!r}", ", ".join(HOOK_FEEDBACKS))
    for name, value, ok, allowed in (("coeff", coeff, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                                     ("momentum", momentum, lambda v: 0 <= v < 1, "a number in [0, 1)"),
                                     ("weight_decay", weight_decay, lambda v: v >= 0, "a number >= 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ConfigError(name, f"got {value!r}", allowed)
    order = None
    if model is not None:
        order = {id(p): i for i, p in enumerate(model.parameters())}
    state = HookState(Reducer(codec, seed=seed), feedback=feedback, coeff=float(coeff), momentum=float(momentum),
                      weight_decay=float(weight_decay), process_group=process_group, order=order)
    return compressed_hook, state


def _message(state: HookState, param: torch.nn.Parameter, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """p = e + lr * m with m = mu * m + grad + wd * y (the parameter holds y during backward)."""
    key = id(param)
    g = flat = grad.reshape(-1)
    if state.weight_decay:
        g = g + state.weight_decay * param.detach().reshape(-1)
    if state.momentum:
        m = state.momenta.get(key)
        m = g.clone() if m is None else m.mul_(state.momentum).add_(g)
        state.momenta[key] = m
        g = m
    p = g * lr if lr != 1.0 else g
    e = state.errors.get(key) if state.feedback != "none" else None
    if e is not None:
        return e + p
    return p.clone() if p is flat else p  # never hand out a view of DDP's bucket


def compressed_hook(state, bucket):  # no annotations: DDP checks them against its own types
    """DDP comm hook: D = mean over ranks of C(p) for this bucket (a dist.GradBucket), handed to the
    optimizer as D / lr; residuals and momenta updated in `state`."""
    if state.reducer.comm is None:
        state.reducer.comm = DistComm(state.process_group)
    if state.feedback in NEEDS_LR and state.lrs is None:
        raise ConfigError("feedback", f"{state.feedback} needs the learning rate and the detached point: wrap "
                          "forward and backward in `with state.step_context(optimizer):`", "ef or none without it")
    params = list(bucket.parameters())
    grads = list(bucket.gradients())
    idx = list(range(len(params)))
    if state.order is not None:
        idx.sort(key=lambda i: state.order.get(id(params[i]), len(state.order) + i))
    lrs = [state.lrs.get(id(params[i]), 1.0) if state.lrs is not None else 1.0 for i in idx]
    parts = []
    for i, lr in zip(idx, lrs):
        state.params[id(params[i])] = params[i]
        parts.append(_message(state, params[i], grads[i], lr))
    keep = state.feedback != "none"
    p = torch.cat(parts) if len(parts) > 1 else parts[0]
    segments = [t.numel() for t in parts]
    red = state.reducer.mean(p, step=state.step, bucket=bucket.index(), segments=segments, need_local=keep)
    if keep:
        res = p - red.local
        pos = 0
        for i, n in zip(idx, segments):
            state.errors[id(params[i])] = res[pos:pos + n]
            pos += n
    # back to the bucket's own layout, in gradient units for the optimizer
    pieces: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
    pos = 0
    for i, n, lr in zip(idx, segments, lrs):
        piece = red.mean[pos:pos + n]
        pieces[i] = piece / lr if lr != 1.0 else piece
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
