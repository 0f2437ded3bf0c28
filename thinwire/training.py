"""Local training and evaluation on a model held as one flat parameter vector.

Shared by every engine: simulated clients, served clients and the server's evaluation all move
models around as flat float32 vectors (what codecs encode) and load them into a module here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from thinwire.compression.tensors import FlatSpec, flatten, unflatten


def state_items(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The floating-point entries of the state dict (parameters and float buffers such as BN stats)."""
    return [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]


def model_spec(model: nn.Module) -> FlatSpec:
    return flatten(state_items(model))[1]


def get_flat(model: nn.Module) -> torch.Tensor:
    return flatten(state_items(model))[0]


def set_flat(model: nn.Module, vec: torch.Tensor, spec: FlatSpec | None = None) -> None:
    spec = spec or model_spec(model)
    tensors = unflatten(vec.detach().float().reshape(-1), spec)
    state = model.state_dict()
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.view_as(state[name]))


def flat_grad(model: nn.Module, *, like_state: bool = False) -> torch.Tensor:
    """The model's gradient as one flat vector; a parameter without a gradient contributes zeros.

    Default layout: `model.parameters()` in order, in their dtype (the all-reduce engines' vector).
    `like_state=True`: laid out like `get_flat` (the float state-dict entries in order, buffers
    such as BN statistics get zero) and in float64, which gradient coding's exact decoding needs."""
    if not like_state:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in model.parameters()])
    params = dict(model.named_parameters())
    out = []
    for name, t in state_items(model):
        p = params.get(name)
        g = p.grad if p is not None and p.grad is not None else None
        out.append((g if g is not None else torch.zeros_like(t)).reshape(-1).double())
    return torch.cat(out)


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1, batch_size: int = 16,
                lr: float = 0.05, momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0) -> tuple[float, int]:
    """Plain minibatch SGD over (x, y); returns (mean training loss, number of steps)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    total, steps = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return (total / steps if steps else 0.0), steps


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model on (x, y), averaged over every label in y.

    Classifiers: logits (n, classes), labels (n,). Sequence models: logits (n, classes, T) and
    labels (n, T), one per position (torch's layout for a loss over positions; the char LM's
    next-character accuracy): the mean runs over all n*T predictions.
    """
    model.eval()
    correct, loss_sum = 0, 0.0
    for s in range(0, len(x), batch_size):
        logits = model(x[s:s + batch_size])
        target = y[s:s + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    n = max(1, y.numel())
    return correct / n, loss_sum / n


def build_run_model(cfg, data):
    """(initial flat model, evaluator, segments) of a run: the same seeded model in every mode."""
    from thinwire.models import model_from_config

    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg, data)
    spec = model_spec(model)
    x_test, y_test = data.test_data()

    def evaluator(vec: torch.Tensor) -> tuple[float, float]:
        set_flat(model, vec, spec)
        return evaluate(model, x_test, y_test)

    return get_flat(model), evaluator, spec.segments
