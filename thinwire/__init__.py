"""thinwire: communication-efficient distributed and federated training over real wires."""
from __future__ import annotations

__version__ = "0.1.0"


def simulate(cfg=None, *, data=None, **overrides):
    """Run a simulation from a RunConfig (or keyword settings) and return its RunResult.
    `data`: a FederatedDataset to use instead of the configured data set."""
    from .config import RunConfig, build, to_dict
    from .sim.engine import simulate as _simulate

    values = to_dict(cfg) if cfg is not None else {}
    resume = overrides.pop("resume", False)
    values.update(overrides)
    return _simulate(build(RunConfig, values), resume=resume, data=data)


def decentralized(cfg=None, **overrides):
    """Train peers on a graph (CDProxSGT, DProxSGT, ChocoSGD, all-reduce) from a DecentralizedConfig
    or keyword settings; returns the summary dict (its "history" holds the per-epoch metrics)."""
    from .config import build, to_dict
    from .gossip_engine import DecentralizedConfig, run_decentralized

    values = to_dict(cfg) if cfg is not None else {}
    values.update(overrides)
    return run_decentralized(build(DecentralizedConfig, values))
