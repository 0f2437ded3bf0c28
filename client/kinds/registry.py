"""Client task kinds by name: what a client can be asked to do, one registered function per kind.

A kind turns (the broadcast vector, this client's data, its persistent state) into named result
tensors plus scalars. Encoding, error feedback and the wire are the runtime's job
(`thinwire.client.runtime`), so a kind is plain PyTorch. Built-in kinds live in their own modules
beside this one and are imported on first use."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from thinwire.compression.feedback import Memory, make_memory
from thinwire.compression.tensors import FlatSpec
from thinwire.task import DEFAULT_TENSOR, Task


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
BUILTIN_MODULES: dict[str, str] = {"train": "thinwire.client.kinds.local_sgd", "jacobian": "thinwire.client.kinds.jacobian",
                                   "coded_gradient": "thinwire.client.kinds.coded_gradient",
                                   "attack": "thinwire.client.kinds.attack", "secagg": "thinwire.client.kinds.secagg"}


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
