"""thinwire: communication-efficient distributed and federated training over real wires."""
from __future__ import annotations

__version__ = "0.1.0"


def simulate(cfg=None, *, data=None, test_data=None, resume: bool = False, force: bool = False, **overrides):
    """Run a simulation from a RunConfig and/or keyword settings; returns the engine's RunResult.

    data: your own data instead of a named data set: (x, y) tensors/arrays or a torch Dataset
        (pooled; cut into `clients` by `partition`: iid, dirichlet or shards), a list with one such
        entry per client (your own split), or a ready `thinwire.data.FederatedDataset`.
    test_data: (x, y) or a Dataset for the global test set (default: a seeded 20% held out).
    resume / force: continue / overwrite an existing named run directory (see thinwire.rundir);
        without a name every call gets a new directory OUT_DIR/simulate-DATE-TIME.
    """
    from thinwire.config import RunConfig, build, to_dict
    from thinwire.data.federated import FederatedDataset
    from thinwire.data.datasets import from_user_data
    from thinwire.rundir import in_run_dir
    from thinwire.sim.engine import simulate as _simulate

    values = to_dict(cfg) if cfg is not None else {}
    values.update(overrides)
    fed = None
    if data is not None:
        defaults = to_dict(RunConfig())
        get = lambda k: values.get(k, defaults[k])  # noqa: E731
        if isinstance(data, FederatedDataset):
            if test_data is not None:
                from thinwire.errors import ConfigError
                raise ConfigError("test_data", "a FederatedDataset brings its own test set", "leave it unset")
            fed = data
        else:
            fed = from_user_data(data, test_data, clients=None if isinstance(data, list) else get("clients"),
                                 partition=get("partition") if not isinstance(data, list) else "natural",
                                 alpha=get("alpha"), shards_per_client=get("shards_per_client"), seed=get("seed"))
        from thinwire.config import PARTITIONS
        values.update(dataset="custom", clients=fed.num_clients,
                      partition=fed.partition if fed.partition in PARTITIONS else "natural")
        if "per_round" not in values:  # the default K may exceed a small user fleet
            values["per_round"] = min(defaults["per_round"], fed.num_clients)
    elif test_data is not None:
        from thinwire.errors import ConfigError
        raise ConfigError("test_data", "given without data", "pass data= too")
    run_cfg = build(RunConfig, values)
    run_cfg = in_run_dir(run_cfg, "simulate", resume=resume, force=force)
    if fed is None:
        return _simulate(run_cfg, resume=resume)
    return _simulate(run_cfg, resume=resume, data=fed)


def decentralized(cfg=None, **overrides):
    """Train peers on a graph (CDProxSGT, DProxSGT, ChocoSGD, all-reduce) from a DecentralizedConfig
    or keyword settings; returns the summary dict (its "history" holds the per-epoch metrics)."""
    from thinwire.config import build, to_dict
    from thinwire.gossip.config import DecentralizedConfig
    from thinwire.gossip.engine import run_decentralized

    values = to_dict(cfg) if cfg is not None else {}
    values.update(overrides)
    return run_decentralized(build(DecentralizedConfig, values))
