"""Strategies by name: the built-ins (FedAvg, FedAvgM here; NTK-FL and the gradient-coding schemes
imported on first use), user registrations and `package.module:Class` plug-ins."""
from __future__ import annotations

from typing import Any, Callable

from thinwire.server.strategy.base import Strategy
from thinwire.server.strategy.fedavg import FedAvg, FedAvgM

# -- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[[Any], Strategy]] = {"fedavg": FedAvg, "fedavgm": FedAvgM}
#: built-in strategies defined in their own modules, imported on first use: name -> module
BUILTIN_MODULES: dict[str, str] = {"ntk": "thinwire.server.strategy.ntk", "fedbuff": "thinwire.server.strategy.fedbuff",
                                   **{name: "thinwire.server.strategy.sgc" for name in ("uncoded", "gc", "sr-sgc", "m-sgc")},
                                   # robust rules and central DP (issue 23)
                                   **{name: "thinwire.server.strategy.robust" for name in ("median", "trimmed-mean", "krum")},
                                   "dp-fedavg": "thinwire.server.strategy.dp", "secagg": "thinwire.server.strategy.secagg"}


def register(name: str, factory: Callable[[Any], Strategy] | None = None):
    """Register a strategy factory `factory(cfg) -> Strategy` under `name` (also a decorator)."""
    def add(f):
        _REGISTRY[name] = f
        return f
    return add(factory) if factory is not None else add


def available() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILTIN_MODULES))


def make_strategy(cfg) -> Strategy:
    """The run's strategy: a registered name or `package.module:Class` (called with the config)."""
    from thinwire.errors import ConfigError
    from thinwire.plugins import load_object

    name = cfg.strategy
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        import importlib
        importlib.import_module(BUILTIN_MODULES[name])
    if name in _REGISTRY:
        return _REGISTRY[name](cfg)
    if ":" in name:
        try:
            cls = load_object(name)
        except ValueError as e:
            raise ConfigError("strategy", str(e)) from None
        strategy = cls(cfg)
        if not isinstance(strategy, Strategy):
            raise ConfigError("strategy", f"{name} is not a thinwire.server.strategy.Strategy subclass")
        return strategy
    raise ConfigError("strategy", f"unknown strategy {name!r}", ", ".join(available()) + " or package.module:Class")
