"""The federated data set the engines use: each client's (x, y) on demand plus one shared test set.
`PartitionedDataset` is a loaded data set cut by index lists; other subclasses (the synthetic
benchmark) generate clients lazily."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from thinwire.data.loaders import DATASET_NAMES, Dataset
from thinwire.data.partition import describe, label_counts

DATASETS = DATASET_NAMES + ("synthetic", "stdlib-text")
PARTITIONS = ("iid", "dirichlet", "shards", "natural")


class FederatedDataset:
    """Per-client training data plus one shared test set. Subclasses may generate clients lazily."""

    name: str
    targets: str = "class"  # "class": one label per sample; "next-token": labels (N, T), one per position
    num_clients: int
    num_classes: int
    input_shape: tuple[int, ...]
    partition: str

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of client k: float32 (n_k, *input_shape) and int64 (n_k,)."""
        raise NotImplementedError

    def client_size(self, k: int) -> int:
        """Number of training samples of client k (cheap: no data is built)."""
        raise NotImplementedError

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out set the global model is evaluated on."""
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------------------
    def client_sizes(self) -> np.ndarray:
        """All client sizes as an int64 array (for weighting and summaries)."""
        return np.array([self.client_size(k) for k in range(self.num_clients)], dtype=np.int64)

    def clients(self) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
        for k in range(self.num_clients):
            yield k, self.client_data(k)

    def __len__(self) -> int:
        return self.num_clients

    def _check_client(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_clients:
            raise IndexError(f"client id {k!r} out of range 0..{self.num_clients - 1}")
        return int(k)


class PartitionedDataset(FederatedDataset):
    """A loaded `Dataset` cut into clients by index lists (held in memory; x is shared, not copied)."""

    def __init__(self, dataset: Dataset, parts: list[np.ndarray], partition: str, scheme: str | None = None):
        self.dataset = dataset
        self.name = dataset.name
        self.num_clients = len(parts)
        self.num_classes = dataset.num_classes
        self.input_shape = dataset.input_shape
        self.partition = partition
        self.scheme = scheme or partition
        self._parts = [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in parts]

    def client_indices(self, k: int) -> np.ndarray:
        """Indices of client k's samples into `dataset.x_train`."""
        return self._parts[self._check_client(k)].numpy()

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._parts[self._check_client(k)]
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    def client_size(self, k: int) -> int:
        return len(self._parts[self._check_client(k)])

    def client_sizes(self) -> np.ndarray:
        return np.array([len(p) for p in self._parts], dtype=np.int64)

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.x_test, self.dataset.y_test

    def label_counts(self) -> np.ndarray:
        """(clients, classes) label histogram."""
        y = self.dataset.y_train.numpy()
        return np.stack([label_counts(y[p.numpy()], self.num_classes) for p in self._parts])

    def summary(self) -> str:
        note = f"test set: {len(self.dataset.y_test)} samples"
        return describe(self.name, self.scheme, self.client_sizes(), self.label_counts(), self.num_classes, note)

    def __repr__(self) -> str:
        return f"PartitionedDataset({self.name!r}, clients={self.num_clients}, partition={self.scheme!r})"
