"""Model zoo: small networks sized from the data set's input shape, plus user factories.

`build_model` draws initial weights only from torch's global RNG (or, with `seed=`, from a forked
one that leaves the caller's RNG untouched), so the server and every client can build the same
initial model from the same seed without shipping it.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from thinwire.errors import ConfigError

BUILTIN_MODELS = ("mlp", "lenet", "logreg")
MODELS_ALLOWED = "mlp, lenet, logreg or package.module:function"


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    n = 1
    for d in input_shape:
        n *= int(d)
    return n


class MLP(nn.Sequential):
    """flatten -> (Linear, ReLU) per hidden size -> Linear."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (64, 64)):
        layers: list[nn.Module] = [nn.Flatten()]
        width = _flat_dim(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LogReg(nn.Sequential):
    """Multinomial logistic regression: flatten -> Linear (softmax lives in the loss)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__(nn.Flatten(), nn.Linear(_flat_dim(input_shape), num_classes))


class LeNet(nn.Module):
    """LeNet-5 style CNN whose convolution and pooling sizes follow the image size.

    conv5x5 (same padding, 6 maps) -> ReLU -> maxpool2 -> conv (16 maps) -> ReLU -> maxpool2
    -> 120 -> 84 -> classes. The second convolution is the classic valid 5x5 when the feature map
    is at least 10 pixels (28x28 MNIST: 28->14->10->5; 32x32 CIFAR: 32->16->12->6) and a same-padded
    3x3 for small inputs (8x8 digits: 8->4->4->2), so one definition serves all data sets.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError("model", f"lenet needs image input (channels, height, width), got shape "
                              f"{tuple(input_shape)}", "mlp or logreg for flat features")
        c, h, w = (int(d) for d in input_shape)
        self.input_shape = (c, h, w)
        if h < 4 or w < 4:
            raise ConfigError("model", f"lenet needs images of at least 4x4 pixels, got {h}x{w}", "mlp, logreg")
        h, w = h // 2, w // 2
        if min(h, w) >= 10:
            k2, p2 = 5, 0
        else:
            k2, p2 = 3, 1
        h, w = h + 2 * p2 - k2 + 1, w + 2 * p2 - k2 + 1
        h, w = h // 2, w // 2
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, k2, padding=p2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * h * w, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flattened images, e.g. from a generic data path
            x = x.view(x.shape[0], *self.input_shape)
        return self.classifier(self.features(x))


def _check_shape(input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError("input_shape", f"expected a tuple of positive integers, got {input_shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError("input_shape", f"expected a tuple of positive integers, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", f"expected a positive integer, got {num_classes!r}", ">= 1")
    return shape


def _load_factory(name: str) -> Callable[..., Any]:
    modname, _, fn = name.partition(":")
    if not modname or not fn:
        raise ConfigError("model", f"unknown model {name!r}", MODELS_ALLOWED)
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name and modname.startswith(e.name):
            raise ConfigError("model", f"cannot import module {modname!r} for {name!r} (is it on PYTHONPATH?)",
                              MODELS_ALLOWED) from None
        raise ConfigError("model", f"importing {modname!r} failed: missing module {e.name!r}") from None
    except Exception as e:  # syntax errors and the like inside the user's module
        first = (str(e).splitlines() or [""])[0]
        raise ConfigError("model", f"importing {modname!r} failed: {type(e).__name__}: {first}") from None
    factory = getattr(module, fn, None)
    if factory is None or not callable(factory):
        raise ConfigError("model", f"module {modname!r} has no callable {fn!r}", MODELS_ALLOWED)
    return factory


def _call_factory(name: str, factory: Callable[..., Any], offered: dict[str, Any]) -> nn.Module:
    """Pass the keywords the factory names (all of them if it takes **kwargs); none if it takes none."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins / C callables: try the documented call
        kwargs = {k: offered[k] for k in ("input_shape", "num_classes")}
    else:
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            kwargs = {k: offered[k] for k in ("input_shape", "num_classes")}
        else:
            kwargs = {p.name: offered[p.name] for p in params
                      if p.name in offered and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            missing = [p.name for p in params if p.default is p.empty and p.name not in kwargs
                       and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if missing:
                raise ConfigError("model", f"factory {name!r} needs arguments thinwire cannot supply: "
                                  f"{', '.join(missing)}", "input_shape, num_classes, hidden or none")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, hidden: Sequence[int] = (64, 64),
                seed: int | None = None) -> nn.Module:
    """Build a model by name: "mlp", "lenet", "logreg" or "package.module:function".

    A user factory is called as function(input_shape=..., num_classes=...) (plus hidden= if it
    names that parameter), or function() if it takes no arguments. With `seed`, the weights are
    drawn from a forked RNG seeded with it; otherwise from torch's global RNG.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("model", f"unknown model {name!r}", MODELS_ALLOWED)
    shape = _check_shape(input_shape, num_classes)
    if name == "mlp":
        try:
            hidden = [int(h) for h in hidden]
        except (TypeError, ValueError):
            raise ConfigError("hidden", f"bad hidden sizes {hidden!r}", "a list of positive integers") from None
        if any(h < 1 for h in hidden):
            raise ConfigError("hidden", f"bad hidden sizes {hidden!r}", "a list of positive integers")
    if name not in BUILTIN_MODELS and ":" not in name:
        raise ConfigError("model", f"unknown model {name!r}", MODELS_ALLOWED)
    factory = _load_factory(name) if name not in BUILTIN_MODELS else None

    def make() -> nn.Module:
        if name == "mlp":
            return MLP(shape, num_classes, hidden)
        if name == "logreg":
            return LogReg(shape, num_classes)
        if name == "lenet":
            return LeNet(shape, num_classes)
        assert factory is not None
        return _call_factory(name, factory, {"input_shape": shape, "num_classes": num_classes,
                                             "hidden": tuple(hidden)})

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return make()


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of all parameters at fp32: the uncompressed size of one model update on the wire."""
    return 4 * sum(p.numel() for p in model.parameters())


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_from_config(cfg, data) -> nn.Module:
    """The model a RunConfig describes, sized from its data set."""
    return build_model(cfg.model, tuple(data.input_shape), data.num_classes, hidden=tuple(cfg.hidden))
