"""Model zoo: networks sized from the data set's input shape, built by name, plus user factories.

Built in: mlp, logreg, lenet (`basic`); resnet20 / resnet18 with GroupNorm and their BatchNorm
variants resnet20-bn / resnet18-bn (`resnet`); the FedAvg paper's CNN, fedavg-cnn (`cnn`); and
charlm, a ~1M-parameter character transformer for text windows (`charlm`). Convolutional models
read (L,) / (C, L) inputs as 1-D signals and (C, H, W) as images (`layers`).

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

from thinwire.models.basic import MLP, LeNet, LogReg
from thinwire.models.charlm import CharTransformer
from thinwire.models.cnn import FedAvgCNN
from thinwire.models.resnet import ResNet, resnet18, resnet20

# name -> factory(input_shape, num_classes); mlp takes `hidden` as well
ZOO: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": LogReg,
    "lenet": LeNet,
    "resnet20": lambda s, c: resnet20(s, c, norm="group"),
    "resnet18": lambda s, c: resnet18(s, c, norm="group"),
    "resnet20-bn": lambda s, c: resnet20(s, c, norm="batch"),
    "resnet18-bn": lambda s, c: resnet18(s, c, norm="batch"),
    "fedavg-cnn": FedAvgCNN,
    "charlm": CharTransformer,
}
BUILTIN_MODELS = ("mlp", *ZOO)
SEQUENCE_MODELS = ("charlm",)  # models whose output is per-position logits (N, classes, T)
MODELS_ALLOWED = "mlp, lenet, logreg, " + ", ".join(n for n in ZOO if n not in ("lenet", "logreg")) + \
    " or package.module:function"


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
    """Build a model by name: one of BUILTIN_MODELS or "package.module:function".

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
        if name in ZOO:
            return ZOO[name](shape, num_classes)
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


def check_model_fits_data(model: str, data) -> None:
    """Text data (per-position next-character labels) needs a sequence model, and a sequence model
    needs text data; user factories are trusted to know what they build."""
    sequence_data = getattr(data, "targets", "class") == "next-token"
    if ":" in model:
        return
    if sequence_data and model not in SEQUENCE_MODELS:
        raise ConfigError("model", f"{model} predicts one class per sample, but data set {data.name} labels every "
                          "position with the next character", ", ".join(SEQUENCE_MODELS) + " or package.module:function")
    if not sequence_data and model in SEQUENCE_MODELS:
        raise ConfigError("model", f"{model} is a language model; data set {data.name} has one label per sample",
                          ", ".join(n for n in BUILTIN_MODELS if n not in SEQUENCE_MODELS))


def model_from_config(cfg, data) -> nn.Module:
    """The model a RunConfig describes, sized from its data set."""
    check_model_fits_data(cfg.model, data)
    return build_model(cfg.model, tuple(data.input_shape), data.num_classes, hidden=tuple(cfg.hidden))


__all__ = ["BUILTIN_MODELS", "MODELS_ALLOWED", "SEQUENCE_MODELS", "ZOO", "MLP", "LeNet", "LogReg", "ResNet",
           "FedAvgCNN", "CharTransformer", "resnet18", "resnet20", "build_model", "check_model_fits_data",
           "model_from_config", "model_size_bytes", "num_parameters"]
