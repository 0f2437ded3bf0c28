"""Strategies: the contract (`base`), FedAvg / FedAvgM (`fedavg`), gradient coding (`sgc`), NTK-FL
(`ntk`), and the registry by name (`registry`). This package's names are the public plug-in API:
`from thinwire.server.strategy import FedAvg, Strategy, register`."""
from thinwire.server.strategy.base import Result, RoundView, Strategy, close_when_all
from thinwire.server.strategy.fedavg import FedAvg, FedAvgM
from thinwire.server.strategy.registry import BUILTIN_MODULES, available, make_strategy, register

__all__ = ["Result", "RoundView", "Strategy", "close_when_all", "FedAvg", "FedAvgM", "BUILTIN_MODULES",
           "available", "make_strategy", "register"]
