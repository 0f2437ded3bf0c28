"""Run one task on one client: the single implementation of client work, used by simulated
virtual clients (inside Ray worker actors), served client processes and Ray-launched clients.

    kind function -> named tensors -> error feedback + codec per tensor -> one wire payload
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from thinwire import compression
from thinwire.compression.feedback import make_memory
from thinwire.compression.tensors import FlatSpec
from thinwire.task import Task, pack_result

from thinwire.client.kinds import ClientContext, get_kind


@dataclass
class ClientState:
    """What persists for a client between rounds: error-feedback memories (per result tensor) and
    the kinds' own state. Plain tensors and values, so it checkpoints and crosses Ray."""
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind_state: dict[str, Any] = field(default_factory=dict)
    rounds: int = 0

    @property
    def empty(self) -> bool:
        return not self.memory and not self.kind_state and not self.rounds


@dataclass
class ClientResult:
    client_id: int
    round: int
    job: int
    payload: bytes              # the result's Encoded bytes: exactly what goes on the wire
    header_size: int            # leading bytes sent reliably
    scalars: dict[str, float]
    state: ClientState

    @property
    def num_samples(self) -> int:
        return int(self.scalars.get("num_samples", 0))

    @property
    def work(self) -> float:
        return float(self.scalars.get("work", self.scalars.get("num_samples", 0.0)))


def execute(task: Task, *, model: nn.Module, spec: FlatSpec, global_vec: torch.Tensor, data: Any,
            x: torch.Tensor, y: torch.Tensor, state: ClientState | None = None) -> ClientResult:
    """Run `task` and encode its result; returns the payload and the client's new state."""
    state = state or ClientState()
    ctx = ClientContext(model=model, spec=spec, global_vec=global_vec, data=data, x=x, y=y,
                        state=dict(state.kind_state), feedback=task.feedback, feedback_coeff=task.feedback_coeff)
    for name, st in state.memory.items():
        ctx.memories[name] = make_memory(st["kind"], st["coeff"])
        ctx.memories[name].load_state_dict(st)
    out = get_kind(task.kind)(ctx, task)
    codec = compression.from_spec(task.codec)
    identity = compression.get("identity")
    items = {}
    for name, t in out.tensors.items():
        flat = t.detach().reshape(-1).float()
        segments = spec.segments if name in out.model_shaped else None
        cctx = task.codec_context(name, segments)
        if name in out.exact:
            enc = identity.encode(flat, cctx)
        else:
            enc, _ = ctx.memory(name).step(flat, codec, cctx)
        items[name] = (enc, tuple(t.shape) if t.dim() else (1,), name in out.model_shaped)
    enc = pack_result(items)
    memory = {n: m.state_dict() for n, m in ctx.memories.items() if m.keeps_residual}
    new_state = ClientState(memory=memory, kind_state=ctx.state, rounds=state.rounds + 1)
    return ClientResult(client_id=task.client_id, round=task.round, job=task.job_id, payload=enc.to_bytes(),
                        header_size=enc.header_size, scalars={k: float(v) for k, v in out.scalars.items()},
                        state=new_state)
