"""Building a run's federated data: `federate(name, num_clients, partition, ...)` loads the named data
set (`thinwire.data.loaders`, or the synthetic generator) and cuts it with a seeded partitioner
(`thinwire.data.partition`); `from_user_data` does the same for a user's own tensors or Datasets."""
from __future__ import annotations

import numpy as np
import torch

from thinwire.data.federated import DATASETS, PARTITIONS, FederatedDataset, PartitionedDataset
from thinwire.data.loaders import Dataset, load_dataset
from thinwire.data.partition import partition_indices
from thinwire.errors import ConfigError


def federate(name: str, num_clients: int, partition: str = "iid", *, alpha: float = 0.5,
             shards_per_client: int = 2, seed: int = 0, path: str | None = None,
             synthetic_alpha: float = 1.0, synthetic_beta: float = 1.0,
             standardize: bool = False) -> FederatedDataset:
    """Build the federated view of a data set.

    partition: "iid", "dirichlet" (alpha), "shards" (shards_per_client) for loaded data sets;
    for "synthetic", "natural" is the FedProx Synthetic(synthetic_alpha, synthetic_beta) benchmark
    and "iid" its Synthetic-IID variant (one shared model and input distribution); for
    "stdlib-text", "natural" is one standard-library module per client and "iid" the same
    windows dealt evenly (`thinwire.data.text`).
    """
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown data set {name!r}", ", ".join(DATASETS))
    if partition not in PARTITIONS:
        raise ConfigError("partition", f"unknown partition {partition!r}", ", ".join(PARTITIONS))
    if name == "synthetic":
        from thinwire.data.synthetic import SyntheticDataset

        if partition not in ("natural", "iid"):
            raise ConfigError("partition", f"{partition!r} does not apply to synthetic data (its generator "
                              "defines the clients)", "natural, iid")
        return SyntheticDataset(num_clients, alpha=synthetic_alpha, beta=synthetic_beta, seed=seed,
                                iid=partition == "iid")
    if name == "stdlib-text":
        from thinwire.data.text import StdlibTextDataset

        return StdlibTextDataset(num_clients, partition=partition, seed=seed)
    if partition == "natural":
        raise ConfigError("partition", f"'natural' exists only for the synthetic and stdlib-text data sets, not {name}",
                          "iid, dirichlet, shards")
    ds = load_dataset(name, path, seed=seed, standardize=standardize)
    parts = partition_indices(ds.y_train.numpy(), num_clients, partition, alpha=alpha,
                              shards_per_client=shards_per_client, seed=seed)
    spc = min(shards_per_client, len(ds.y_train) // num_clients)  # what shards_partition used
    scheme = {"iid": "iid", "dirichlet": f"dirichlet(alpha={alpha:g})",
              "shards": f"shards({spc} per client)"}[partition]
    return PartitionedDataset(ds, parts, partition, scheme)


def dataset_from_config(cfg) -> FederatedDataset:
    """The federated data set a RunConfig describes (used by every engine, server and client)."""
    if cfg.dataset == "custom":
        raise ConfigError("dataset", "'custom' data is given from Python (thinwire.simulate(data=...)), not a file",
                          ", ".join(DATASETS))
    return federate(cfg.dataset, cfg.clients, cfg.partition, alpha=cfg.alpha, shards_per_client=cfg.shards_per_client,
                    seed=cfg.seed, path=cfg.data_path or None, synthetic_alpha=cfg.synthetic_alpha,
                    synthetic_beta=cfg.synthetic_beta, standardize=cfg.standardize)


# -- a user's own data (Python API) -----------------------------------------------------------
def from_user_data(train, test=None, *, clients: int | None = None, partition: str = "iid", alpha: float = 0.5,
                   shards_per_client: int = 2, seed: int = 0, test_fraction: float = 0.2,
                   num_classes: int | None = None, name: str = "custom") -> FederatedDataset:
    """A FederatedDataset from data held in Python, with the same interface as `dataset_from_config`'s.

    train: (x, y) tensors or arrays, or a map-style torch Dataset yielding (x, y) pairs: pooled
        data that `partition` ("iid", "dirichlet" with `alpha`, "shards") cuts into `clients`;
        or a list with one such entry per client (the user's own split, reported as "natural").
    test: the same kinds ((x, y) or a Dataset) for the global test set. Without it a seeded
        `test_fraction` of the pooled rows (of every client's rows, for per-client lists) is held out.
    Labels are integers 0..num_classes-1 (num_classes defaults to the largest label + 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", f"{test_fraction} is out of range", "(0, 1)")
    rng = np.random.default_rng(seed)
    if isinstance(train, list):
        if not train:
            raise ConfigError("data", "the per-client list is empty", "one (x, y) or Dataset per client")
        if clients is not None and clients != len(train):
            raise ConfigError("clients", f"{clients} but the data has {len(train)} per-client entries",
                              f"{len(train)} (or leave it unset)")
        per_client = [_as_tensors(d, f"data[{k}]") for k, d in enumerate(train)]
        for k, (_, y) in enumerate(per_client):
            if len(y) < (2 if test is None else 1):
                raise ConfigError(f"data[{k}]", f"client {k} has {len(y)} samples",
                                  ">= 1 (>= 2 when the test set is held out of the clients)")
        if test is None:
            keep, held = [], []
            for x, y in per_client:
                perm = torch.from_numpy(rng.permutation(len(y)))
                n_test = min(len(y) - 1, max(1, round(len(y) * test_fraction)))
                held.append((x[perm[:n_test]], y[perm[:n_test]]))
                keep.append((x[perm[n_test:]], y[perm[n_test:]]))
            per_client = keep
            test_xy = (torch.cat([x for x, _ in held]), torch.cat([y for _, y in held]))
        else:
            test_xy = _as_tensors(test, "test_data")
        sizes = [len(y) for _, y in per_client]
        x_train = torch.cat([x for x, _ in per_client])
        y_train = torch.cat([y for _, y in per_client])
        bounds = np.cumsum([0, *sizes])
        parts = [np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes))]
        ds = _user_dataset(name, x_train, y_train, test_xy, num_classes)
        return PartitionedDataset(ds, parts, "natural", "natural (one entry per client)")

    x, y = _as_tensors(train, "data")
    if test is None:
        if len(y) < 2:
            raise ConfigError("data", f"{len(y)} samples cannot be split into train and test", ">= 2 samples")
        perm = torch.from_numpy(rng.permutation(len(y)))
        n_test = min(len(y) - 1, max(1, round(len(y) * test_fraction)))
        test_xy = (x[perm[:n_test]], y[perm[:n_test]])
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    else:
        test_xy = _as_tensors(test, "test_data")
    if partition == "natural":
        raise ConfigError("partition", "'natural' needs one data entry per client (a list)", "iid, dirichlet, shards")
    if partition not in PARTITIONS:
        raise ConfigError("partition", f"unknown partition {partition!r}", "iid, dirichlet, shards")
    ds = _user_dataset(name, x, y, test_xy, num_classes)
    n_clients = 1 if clients is None else clients
    parts = partition_indices(ds.y_train.numpy(), n_clients, partition, alpha=alpha,
                              shards_per_client=shards_per_client, seed=seed)
    scheme = {"iid": "iid", "dirichlet": f"dirichlet(alpha={alpha:g})", "shards": "shards"}[partition]
    return PartitionedDataset(ds, parts, partition, scheme)


def _as_tensors(obj, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 (n, ...), y int64 (n,)) from an (x, y) pair of tensors/arrays or a map-style Dataset."""
    from torch.utils.data import Dataset as TorchDataset
    from torch.utils.data import TensorDataset

    if isinstance(obj, TensorDataset) and len(obj.tensors) == 2:
        x, y = obj.tensors
    elif isinstance(obj, TorchDataset):
        try:
            n = len(obj)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError(field, "a torch Dataset without len()", "a map-style Dataset of (x, y)") from None
        if n == 0:
            raise ConfigError(field, "the Dataset is empty", "at least one (x, y) sample")
        items = [obj[i] for i in range(n)]
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise ConfigError(field, "Dataset items are not (x, y) pairs", "a map-style Dataset of (x, y)")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    elif isinstance(obj, tuple) and len(obj) == 2:
        try:
            x, y = torch.as_tensor(obj[0]), torch.as_tensor(obj[1])
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(field, f"cannot make tensors of (x, y): {e}", "tensors or numpy arrays") from None
    else:
        raise ConfigError(field, f"unsupported data of type {type(obj).__name__}",
                          "(x, y) tensors/arrays, a torch Dataset, or a list of those (one per client)")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(field, f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}",
                          "x of shape (n, ...) and labels y of shape (n,)")
    if y.is_floating_point() and not bool(torch.all(y == y.round())):
        raise ConfigError(field, "labels are not integers", "integer class labels 0..C-1")
    if x.ndim == 1:
        x = x[:, None]
    return x.float(), y.long()


def _user_dataset(name: str, x: torch.Tensor, y: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor],
                  num_classes: int | None) -> Dataset:
    xt, yt = test
    if tuple(xt.shape[1:]) != tuple(x.shape[1:]):
        raise ConfigError("test_data", f"test inputs have shape {tuple(xt.shape[1:])}, training inputs "
                          f"{tuple(x.shape[1:])}", "the same per-sample shape")
    lo = int(min(y.min(), yt.min())) if len(yt) else int(y.min())
    hi = int(max(y.max(), yt.max())) if len(yt) else int(y.max())
    classes = hi + 1 if num_classes is None else int(num_classes)
    if lo < 0 or hi >= classes:
        raise ConfigError("data", f"labels span {lo}..{hi}", f"integers 0..{classes - 1}")
    return Dataset(name, x.contiguous(), y, xt.contiguous(), yt, classes, tuple(int(d) for d in x.shape[1:]))
