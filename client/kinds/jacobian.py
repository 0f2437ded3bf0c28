"""The `jacobian` client task kind (NTK-FL / CP-NTK-FL): no local training; the client uploads the
sample-wise Jacobian of its logits at the received weights, its labels and its outputs.

Task params (set by the `ntk` strategy): subsample (fraction of the client's samples),
project (d', 0 = full Jacobian), projection_seed (the round's P, regenerated here, never sent).
Results: "jacobian" (n, d_2, d or d') and "outputs" (n, d_2) go through the run's codec like any
result; "labels" (n,) travel exactly (identity codec; class ids are exact in float32).
"""
from __future__ import annotations

from thinwire.ntk.jacobian import client_jacobian
from thinwire.client.kinds import ClientContext, KindOutput, register_kind
from thinwire.task import Task


def jacobian_work(n: int, d2: int) -> float:
    """Compute charged to the virtual clock, in training-sample units: a training sample is about
    one forward + one backward pass (~3 forward-equivalents), a Jacobian row one forward + d_2
    backward passes (~1 + 2 d_2)."""
    return n * (1 + 2 * d2) / 3


@register_kind("jacobian")
def jacobian(ctx: ClientContext, task: Task) -> KindOutput:
    p = task.params
    res = client_jacobian(ctx.model, ctx.global_vec, ctx.x, ctx.y, subsample=float(p.get("subsample", 1.0)),
                          project_dim=int(p.get("project", 0)), projection_seed=int(p.get("projection_seed", 0)),
                          sample_seed=task.train_seed(), spec=ctx.spec)
    n, d2 = res.outputs.shape
    return KindOutput(tensors={"jacobian": res.jacobian, "labels": res.labels.float(), "outputs": res.outputs},
                      scalars={"num_samples": float(n), "work": jacobian_work(n, d2)},
                      exact=frozenset({"labels"}))
