"""The `train` task kind: local SGD from the broadcast model, result = the model delta (FedAvg's
client update), with DEF's detached starting point when the task asks for it."""
from __future__ import annotations

from typing import Any

import torch

from thinwire.client.kinds.registry import ClientContext, KindOutput, register_kind
from thinwire.task import DEFAULT_TENSOR, Task
from thinwire.training import get_flat, local_train, set_flat


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
