"""The `coded_gradient` task kind of sequential gradient coding (GC, SR-SGC, M-SGC, uncoded).

A worker gets one or more units per round (M-SGC: one per slot): for each, the model version it
must use (one of the M models in the broadcast, which holds them all back to back), the job whose
full-job batch it works on, and the (start, end, coefficient) sample ranges of its code row. It
sends, per unit, the coded combination of the ranges' partial gradients and losses, in float64
split into a float32 hi/lo pair so the identity codec carries it exactly enough for decoding.
"""
from __future__ import annotations

import torch

from thinwire.coding.jobs import coded_message, job_indices, split_hi_lo, unit_tensor_name
from thinwire.task import Task

from thinwire.client.kinds import ClientContext, KindOutput, register_kind


def train_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training set (jobs are batches of it; gradient coding assigns data by code row)."""
    ds = getattr(data, "dataset", None)
    if ds is None or not hasattr(ds, "x_train"):
        raise ValueError("coded_gradient: the data set has no shared training set (use a loaded data set, "
                         "e.g. digits, mnist)")
    return ds.x_train, ds.y_train


@register_kind("coded_gradient")
def coded_gradient(ctx: ClientContext, task: Task) -> KindOutput:
    from thinwire.training import set_flat

    p = task.params
    M, batch = int(p["models"]), int(p["batch"])
    models = ctx.global_vec.reshape(M, -1)
    if models.shape[1] != ctx.spec.numel:
        raise ValueError(f"coded_gradient: broadcast holds {ctx.global_vec.numel()} values, expected {M} models of "
                         f"{ctx.spec.numel}")
    x_all, y_all = train_tensors(ctx.data)
    tensors, samples = {}, 0
    for u in p["units"]:
        set_flat(ctx.model, models[int(u["model"])], ctx.spec)
        idx = job_indices(int(p["job_seed"]), int(u["job"]), len(x_all), batch)
        msg = coded_message(ctx.model, x_all[idx], y_all[idx], u["segments"], batch)
        tensors[unit_tensor_name(u["slot"])] = split_hi_lo(msg)
        samples += sum(int(hi) - int(lo) for lo, hi, _ in u["segments"])
    if not tensors:                                 # nothing left to compute this round: say so
        tensors["idle"] = torch.zeros(1)
    # The virtual clock charges the scheme's normalized load (the paper's delay model), not the
    # rounded sample count: work = load x job batch samples.
    return KindOutput(tensors=tensors, scalars={"num_samples": float(samples), "samples": float(samples),
                                                "work": float(p["load"]) * batch},
                      exact=frozenset(tensors))
