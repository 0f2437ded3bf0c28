"""The Synthetic(alpha, beta) federated benchmark of FedProx (Li et al., MLSys 2020), generated lazily.

Client k has its own softmax-regression model and input distribution:
    u_k ~ N(0, alpha),  W_k ~ N(u_k, 1) in R^{60x10},  b_k ~ N(u_k, 1) in R^10
    B_k ~ N(0, beta),   v_k ~ N(B_k, 1) in R^60,        x ~ N(v_k, Sigma), Sigma_jj = j^-1.2
    y = argmax softmax(W_k^T x + b_k)
alpha controls how much the clients' models differ, beta how much their inputs differ. As in the
authors' generator, alpha and beta are used as the standard deviations of N(0, .) (the paper's
notation reads like variances; the two readings agree for the common settings 0 and 1). Synthetic-IID (`iid=True`) shares one W, b ~ N(0, 1) and v = 0 across clients.

Client sizes follow the authors' power law: n_k = floor(lognormal(4, 2)) + 50 generated samples.
Nothing is materialised up front: client k's model and samples are regenerated from (seed, k) on
each call, with independent streams for its parameters, its training rows and its held-out rows,
so a 10,000-client instance costs one size vector. The held-out 20% of each client is its local
test set; the global test set is the union of the held-out slices (capped at `test_cap` rows each)
of a seeded sample of `test_clients` clients (all of them when there are fewer).

What is learnable: the shift u_k adds the same amount to every class's logit, so after the argmax
each natural client labels its inputs with its own independent random linear model. A global model
can only fit the clients it trains on: FedProx's Synthetic(1,1) (30 devices, all trained, each
scored on its own held-out rows) reaches about 0.6-0.7 with FedAvg, while clients never selected in
training are at chance level (no model beats 1/10 on an unseen client in expectation). So the
natural partition needs few clients, each selected many times; Synthetic-IID (one shared model)
learns at any number of clients.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from thinwire.data.federated import FederatedDataset
from thinwire.errors import ConfigError
from thinwire.data.partition import describe, label_counts

DIM = 60
NUM_CLASSES = 10
_SIGMA_SQRT = np.arange(1, DIM + 1, dtype=np.float64) ** (-1.2 / 2)  # sqrt of diag(Sigma)

# stream tags: each (seed, tag[, k]) seeds an independent numpy Generator
_SIZES, _PARAMS, _TRAIN, _TEST, _GLOBAL, _PICK = range(6)


class SyntheticDataset(FederatedDataset):
    """FedProx Synthetic(alpha, beta) with any number of clients, each built on demand."""

    def __init__(self, num_clients: int, *, alpha: float = 1.0, beta: float = 1.0, seed: int = 0,
                 iid: bool = False, test_fraction: float = 0.2, test_clients: int = 100,
                 test_cap: int = 500, max_client_samples: int | None = None):
        if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
            raise ConfigError("clients", f"expected a positive integer, got {num_clients!r}", ">= 1")
        for field, v in (("synthetic_alpha", alpha), ("synthetic_beta", beta)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(field, f"expected a finite number >= 0, got {v!r}", ">= 0")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError("seed", f"expected an integer >= 0, got {seed!r}", ">= 0")
        if not 0 < test_fraction < 1:
            raise ConfigError("test_fraction", f"{test_fraction} is out of range", "(0, 1)")
        self.name = "synthetic"
        self.num_clients = int(num_clients)
        self.num_classes = NUM_CLASSES
        self.input_shape = (DIM,)
        self.partition = "iid" if iid else "natural"
        self.alpha, self.beta, self.seed, self.iid = float(alpha), float(beta), int(seed), bool(iid)
        self.test_clients, self.test_cap = int(test_clients), int(test_cap)
        # Drawn in client order from one stream: client k's size does not depend on num_clients.
        total = np.floor(np.random.default_rng([self.seed, _SIZES]).lognormal(4.0, 2.0, self.num_clients))
        total = total.astype(np.int64) + 50
        if max_client_samples is not None:
            total = np.minimum(total, max(int(max_client_samples), 2))
        self._n_test = np.maximum(1, np.round(total * test_fraction).astype(np.int64))
        self._n_train = total - self._n_test
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- generator --------------------------------------------------------------------------
    def client_model(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_k (60x10), b_k (10,), v_k (60,)) that generate client k's data."""
        k = self._check_client(k)
        if self.iid:
            g = np.random.default_rng([self.seed, _GLOBAL])
            return g.normal(0.0, 1.0, (DIM, NUM_CLASSES)), g.normal(0.0, 1.0, NUM_CLASSES), np.zeros(DIM)
        g = np.random.default_rng([self.seed, _PARAMS, k])
        u = g.normal(0.0, self.alpha)
        big_b = g.normal(0.0, self.beta)
        w = g.normal(u, 1.0, (DIM, NUM_CLASSES))
        b = g.normal(u, 1.0, NUM_CLASSES)
        v = g.normal(big_b, 1.0, DIM)
        return w, b, v

    def _samples(self, k: int, tag: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, b, v = self.client_model(k)
        z = np.random.default_rng([self.seed, tag, k]).standard_normal((n, DIM))
        x = v + z * _SIGMA_SQRT
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: its argmax is the logits' argmax
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    # -- FederatedDataset -------------------------------------------------------------------
    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self._check_client(k)
        return self._samples(k, _TRAIN, int(self._n_train[k]))

    def client_test_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client k's own held-out rows (same model and input distribution as its training rows)."""
        k = self._check_client(k)
        return self._samples(k, _TEST, int(self._n_test[k]))

    def client_size(self, k: int) -> int:
        return int(self._n_train[self._check_client(k)])

    def client_sizes(self) -> np.ndarray:
        return self._n_train.copy()

    def generated_sizes(self) -> np.ndarray:
        """Rows generated per client before the 80/20 split: floor(lognormal(4, 2)) + 50."""
        return self._n_train + self._n_test

    def test_client_ids(self) -> np.ndarray:
        """The clients whose held-out rows form the global test set."""
        if self.num_clients <= self.test_clients:
            return np.arange(self.num_clients)
        pick = np.random.default_rng([self.seed, _PICK]).choice(self.num_clients, self.test_clients, replace=False)
        return np.sort(pick)

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            xs, ys = [], []
            for k in self.test_client_ids():
                x, y = self.client_test_data(int(k))
                xs.append(x[: self.test_cap])
                ys.append(y[: self.test_cap])
            self._test = (torch.cat(xs), torch.cat(ys))
        return self._test

    def summary(self, max_clients: int = 200) -> str:
        """Sizes over all clients; class statistics over a seeded sample of at most `max_clients`."""
        ids = np.arange(self.num_clients)
        if self.num_clients > max_clients:
            ids = np.sort(np.random.default_rng([self.seed, _PICK, 1]).choice(self.num_clients, max_clients,
                                                                               replace=False))
        counts = np.stack([label_counts(self.client_data(int(k))[1].numpy(), NUM_CLASSES) for k in ids])
        scheme = ("synthetic-iid" if self.iid else f"natural Synthetic({self.alpha:g}, {self.beta:g})")
        note = (f"lazy: client data regenerated from (seed={self.seed}, k); test set = held-out "
                f"{len(self.test_client_ids())} clients' 20% slices (<= {self.test_cap} rows each)")
        if len(ids) < self.num_clients:
            note += f"; class statistics over {len(ids)} sampled clients"
        if not self.iid:
            note += ("\n  natural: each client labels with its own random linear model; only clients selected "
                     "in training are predictable, unseen ones score at chance (1/10). Use few clients "
                     "(FedProx: 30) or --partition iid")
        return describe(self.name, scheme, self._n_train, counts, NUM_CLASSES, note)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_test"] = None  # cheap to rebuild; keeps pickles (e.g. to Ray workers) tiny
        return state

    def __repr__(self) -> str:
        kind = "iid" if self.iid else f"alpha={self.alpha:g}, beta={self.beta:g}"
        return f"SyntheticDataset(clients={self.num_clients}, {kind}, seed={self.seed})"
