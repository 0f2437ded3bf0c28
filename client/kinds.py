"""Client task kinds: what a client can be asked to do, one registered function per kind.

A kind turns (the broadcast vector, this client's data, its persistent state) into named result
tensors plus scalars. Encoding, error feedback and the wire are the runtime's job
(`thinwire.client.runtime`), so a kind is plain PyTorch. Built in: `train` (local SGD, send the
model delta). Gradient coding adds `coded_gradient`, NTK-FL adds `jacobian`; a user registers
their own with `register_kind` in a module named by `--plugins`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from thinwire.compression.feedback import Memory, make_memory
from thinwire.compression.tensors import FlatSpec
from thinwire.task import DEFAULT_TENSOR, Task
from thinwire.training import get_flat, local_train, set_flat


@dataclass
class ClientContext:
    """Everything a kind may read. `state` is the kind's own per-client dict that persists between
    rounds (it must hold tensors and plain values only: it is checkpointed)."""
    model: nn.Module
    spec: FlatSpec
    global_vec: torch.Tensor
    data: Any
    x: torch.Tensor
    y: torch.Tensor
    state: dict[str, Any]
    memories: dict[str, Memory] = field(default_factory=dict)
    feedback: str = "none"
    feedback_coeff: float = 0.3

    def memory(self, name: str = DEFAULT_TENSOR) -> Memory:
        """The error-feedback memory of result tensor `name` (created on first use)."""
        m = self.memories.get(name)
        if m is None:
            m = self.memories[name] = make_memory(self.feedback, self.feedback_coeff)
        return m


@dataclass
class KindOutput:
    """A kind's result: named tensors (any shapes) and scalars. "work" is the compute the virtual
    clock charges (in samples; default num_samples). Names in `exact` travel losslessly (identity
    codec, no error feedback); names in `model_shaped` are laid out like the flat model, so
    per-tensor codecs (random block) see the model's segments."""
    tensors: dict[str, torch.Tensor]
    scalars: dict[str, float] = field(default_factory=dict)
    exact: frozenset[str] = frozenset()
    model_shaped: frozenset[str] = frozenset()


KindFn = Callable[[ClientContext, Task], KindOutput]
_KINDS: dict[str, KindFn] = {}
#: built-in kinds defined in their own modules, imported on first use: name -> module
BUILTIN_MODULES: dict[str, str] = {"jacobian": "thinwire.client.ntk_kind", "coded_gradient": "thinwire.client.coded_gradient"}


def register_kind(name: str, fn: KindFn | None = None):
    """Register a task kind (usable as a decorator: `@register_kind("mine")`)."""
    def add(f: KindFn) -> KindFn:
        if not name or not isinstance(name, str):
            raise ValueError("kind: a non-empty name is required")
        _KINDS[name] = f
        return f
    return add(fn) if fn is not None else add


def available_kinds() -> list[str]:
    return sorted(set(_KINDS) | set(BUILTIN_MODULES))


def get_kind(name: str) -> KindFn:
    if name not in _KINDS and name in BUILTIN_MODULES:
        import importlib
        importlib.import_module(BUILTIN_MODULES[name])
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"task kind: unknown kind {name!r}; allowed: {', '.join(available_kinds())}") from None


def train_params(cfg, rnd: int) -> dict[str, Any]:
    """The `train` kind's fields from the run config (the server's side of the contract)."""
    return {"lr": cfg.lr * cfg.lr_decay ** rnd, "local_epochs": cfg.local_epochs, "batch_size": cfg.batch_size,
            "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}


@register_kind("train")
def train(ctx: ClientContext, task: Task) -> KindOutput:
    """Local SGD from the broadcast model (at DEF's detached point when DEF is on); sends the delta.

    The memories are written for gradient-like messages (x <- x - C(p), virtual iterate x - e,
    DEF point x - c*e). A client's message is a delta the server *adds* (x <- x + C(delta)), so
    its virtual iterate is x + e and DEF's point is x + c*e: the same rule applied to -x."""
    p = task.params
    start = -ctx.memory(DEFAULT_TENSOR).eval_point(-ctx.global_vec)
    set_flat(ctx.model, start, ctx.spec)
    seed = task.train_seed()
    torch.manual_seed(seed)
    epochs = int(p.get("local_epochs", 1))
    loss, _ = local_train(ctx.model, ctx.x, ctx.y, epochs=epochs, batch_size=int(p.get("batch_size", 16)),
                          lr=float(p.get("lr", 0.05)), momentum=float(p.get("momentum", 0.0)),
                          weight_decay=float(p.get("weight_decay", 0.0)), seed=seed)
    delta = get_flat(ctx.model) - start
    n = len(ctx.x)
    return KindOutput(tensors={DEFAULT_TENSOR: delta},
                      scalars={"num_samples": float(n), "train_loss": loss, "work": float(n * epochs)},
                      model_shaped=frozenset({DEFAULT_TENSOR}))
