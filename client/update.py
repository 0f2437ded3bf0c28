"""One client's round: train from the global model, compensate with error feedback, encode.

The single implementation of client work, run by simulated virtual clients (inside Ray worker
actors), served client processes and Ray-launched client actors alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from thinwire import compression
from thinwire.compression.feedback import make_memory
from thinwire.task import TaskSpec, derive_seed
from thinwire.training import local_train, model_spec, set_flat, get_flat


@dataclass
class ClientState:
    """What persists for a client between rounds: its error-feedback memory."""
    memory: dict[str, Any] = field(default_factory=dict)
    rounds: int = 0


@dataclass
class ClientResult:
    client_id: int
    round: int
    payload: bytes              # Encoded.to_bytes(): exactly what goes on the wire
    header_size: int            # leading bytes sent reliably
    num_samples: int
    train_loss: float
    state: ClientState


def run_client_round(model: nn.Module, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     task: TaskSpec, state: ClientState | None = None) -> ClientResult:
    """Train locally from the global model and return the encoded delta plus the new state."""
    state = state or ClientState()
    memory = make_memory(task.feedback, task.feedback_coeff)
    if state.memory:
        memory.load_state_dict(state.memory)
    spec = model_spec(model)
    start = memory.eval_point(global_vec)
    set_flat(model, start, spec)
    seed = derive_seed(task.seed, "train", task.round, task.client_id)
    torch.manual_seed(seed)
    loss, _ = local_train(model, x, y, epochs=task.local_epochs, batch_size=task.batch_size, lr=task.lr,
                          momentum=task.momentum, weight_decay=task.weight_decay, seed=seed)
    delta = get_flat(model) - start
    codec = compression.from_spec(task.codec)
    enc, _ = memory.step(delta, codec, task.codec_context(spec.segments))
    new_state = ClientState(memory=memory.state_dict() if memory.keeps_residual else {}, rounds=state.rounds + 1)
    return ClientResult(client_id=task.client_id, round=task.round, payload=enc.to_bytes(),
                        header_size=enc.header_size, num_samples=len(x), train_loss=loss, state=new_state)
