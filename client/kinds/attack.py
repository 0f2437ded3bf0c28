"""The `attack` task kind: a simulated malicious client (issue 23), to test robust aggregation.

A seeded fraction of the fleet (`--attack-fraction`, chosen once per run from the run seed) is
malicious. Its task is the `train` task plus the attack's fields; it trains like an honest client
(on flipped labels for `label_flip`) and then corrupts the delta it sends:

    scale       s x delta                      (--attack-scale s; 1e3 is a "huge but finite" update)
    sign_flip   -s x delta
    noise       N(0, (s x rms(delta))^2) per coordinate, instead of the delta
    label_flip  the honest delta of training on labels c -> (classes - 1 - c)

The attack travels in the task because it is a *simulation*: both modes run the same clients, so
a served fleet reproduces a simulated attack. The server's aggregation never reads these fields.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from thinwire.task import DEFAULT_TENSOR, Task, derive_seed

from thinwire.client.kinds.local_sgd import train
from thinwire.client.kinds.registry import ClientContext, KindOutput, register_kind

ATTACKS = ("scale", "sign_flip", "noise", "label_flip")


@lru_cache(maxsize=16)
def malicious_clients(seed: int, clients: int, fraction: float) -> frozenset[int]:
    """The seeded set of round(fraction x clients) malicious client ids."""
    k = int(round(fraction * clients))
    rng = np.random.default_rng(derive_seed(seed, "attack-clients") & 0xFFFFFFFF)
    return frozenset(int(c) for c in rng.choice(clients, size=k, replace=False)) if k else frozenset()


def attack_params(cfg, client_id: int) -> dict[str, Any]:
    """The attack fields of `client_id`'s task ({} for an honest client or --attack none)."""
    mode = getattr(cfg, "attack", "none") if cfg is not None else "none"
    if mode == "none" or client_id not in malicious_clients(cfg.seed, cfg.clients, cfg.attack_fraction):
        return {}
    return {"attack": mode, "attack_scale": float(cfg.attack_scale)}


def corrupt(delta: torch.Tensor, mode: str, scale: float, seed: int) -> torch.Tensor:
    """The malicious message made from an honest delta (pure; `label_flip` leaves it as it is)."""
    if mode == "scale":
        return delta * scale
    if mode == "sign_flip":
        return delta * -scale
    if mode == "noise":
        g = torch.Generator().manual_seed(seed & 0x7FFFFFFFFFFFFFFF)
        rms = float(delta.double().pow(2).mean().sqrt())
        return torch.randn(delta.shape, generator=g) * (scale * rms)
    if mode == "label_flip":
        return delta
    raise ValueError(f"attack: unknown attack {mode!r}; allowed: {', '.join(ATTACKS)}")


@register_kind("attack")
def attack(ctx: ClientContext, task: Task) -> KindOutput:
    mode, scale = str(task.params.get("attack", "")), float(task.params.get("attack_scale", 1.0))
    if mode not in ATTACKS:
        raise ValueError(f"attack: unknown attack {mode!r}; allowed: {', '.join(ATTACKS)}")
    if mode == "label_flip":
        classes = int(getattr(ctx.data, "num_classes", 0) or int(ctx.y.max()) + 1)
        ctx = dataclasses.replace(ctx, y=(classes - 1) - ctx.y)
    out = train(ctx, dataclasses.replace(task, kind="train"))     # the honest run it would have made
    delta = out.tensors[DEFAULT_TENSOR]
    out.tensors[DEFAULT_TENSOR] = corrupt(delta, mode, scale, derive_seed(task.seed, "attack-noise", task.round,
                                                                         task.client_id))
    out.scalars["malicious"] = 1.0
    return out
