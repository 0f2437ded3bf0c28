"""The `secagg` task kind: local SGD as `train`, then the delta quantized onto the round's shared
integer grid (shared random block, shared rotation, stochastic rounding: thinwire.secagg.quantize).

The result is the clear integer vector x. It never leaves a served client as it is: the client
masks it (thinwire.secagg) and pushes only the masked residues; a simulation masks it the same way
before the server sees it."""
from __future__ import annotations

import torch

from thinwire.client.kinds.local_sgd import train
from thinwire.client.kinds.registry import ClientContext, KindOutput, register_kind
from thinwire.secagg.wire import INPUT, KIND, codec_of
from thinwire.task import DEFAULT_TENSOR, Task, derive_seed


@register_kind(KIND)
def secagg(ctx: ClientContext, task: Task) -> KindOutput:
    out = train(ctx, task)
    delta = out.tensors[DEFAULT_TENSOR]
    q = codec_of(task).encode(delta, client_seed=derive_seed(task.seed, "secagg-dither", task.round, task.client_id))
    return KindOutput(tensors={INPUT: torch.from_numpy(q).float()}, scalars=out.scalars, exact=frozenset({INPUT}))
