"""Seeded partitioners: split N labelled samples over K clients, plus label-skew statistics.

Each partitioner returns a list of K sorted int64 index arrays that together hold every sample
exactly once. The same arguments always give the same indices (one `numpy` Generator seeded from
`seed`, no global RNG). Whenever N >= K every client gets at least one sample, because the
engines cannot train or weight an empty client.
"""
from __future__ import annotations

import math

import numpy as np

from thinwire.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "shards")


def _check(labels: np.ndarray, num_clients: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ConfigError("clients", f"expected a positive integer, got {num_clients!r}", ">= 1")
    if len(labels) < num_clients:
        raise ConfigError("clients", f"{num_clients} clients but only {len(labels)} training samples",
                          f"1..{len(labels)}")
    return labels.astype(np.int64, copy=False)


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid_partition(labels: np.ndarray, num_clients: int, *, seed: int = 0) -> list[np.ndarray]:
    """Uniformly shuffled, near-equal split: client sizes differ by at most one."""
    labels = _check(labels, num_clients)
    perm = np.random.default_rng(seed).permutation(len(labels))
    return _finish(np.array_split(perm, num_clients))


def dirichlet_partition(labels: np.ndarray, num_clients: int, *, alpha: float = 0.5,
                        seed: int = 0) -> list[np.ndarray]:
    """Label-skewed split (Hsu et al. 2019): each class is spread over the clients with proportions
    drawn from Dirichlet(alpha); small alpha -> each client sees few classes.

    Clients left empty are repaired deterministically: each empty client, in index order, takes
    one sample from the currently largest client (lowest index on ties). This keeps the draw's
    skew (only a handful of samples move) instead of resampling until lucky.
    """
    labels = _check(labels, num_clients)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError("alpha", f"Dirichlet concentration must be a positive number, got {alpha!r}", "> 0")
    rng = np.random.default_rng(seed)
    buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, float(alpha)))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # underflow at tiny alpha: all mass on one client
            p = np.zeros(num_clients)
            p[rng.integers(num_clients)] = 1.0
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, part in enumerate(np.split(idx, np.clip(cuts, 0, len(idx)))):
            if len(part):
                buckets[k].append(part)
    parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    sizes = np.array([len(p) for p in parts])
    for k in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        parts[k] = parts[donor][-1:]
        parts[donor] = parts[donor][:-1]
        sizes[k], sizes[donor] = 1, sizes[donor] - 1
    return _finish(parts)


def shards_partition(labels: np.ndarray, num_clients: int, *, shards_per_client: int = 2,
                     seed: int = 0) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017): sort by label, cut into
    num_clients * shards_per_client contiguous near-equal shards, deal each client random shards.

    A shard is a contiguous run of the sorted labels, so it holds one class unless it straddles a
    class boundary: the excess of classes over shards_per_client, summed over all clients, is at
    most num_classes - 1 (one per boundary), and when shards are no longer than the smallest
    class no client has more than 2 * shards_per_client classes.
    When N < num_clients * shards_per_client the shard count per client is lowered to
    N // num_clients so that no shard, and no client, is empty.
    """
    labels = _check(labels, num_clients)
    if isinstance(shards_per_client, bool) or not isinstance(shards_per_client, (int, np.integer)) \
            or shards_per_client < 1:
        raise ConfigError("shards_per_client", f"expected a positive integer, got {shards_per_client!r}", ">= 1")
    spc = min(int(shards_per_client), len(labels) // num_clients)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))  # random order inside each class
    order = perm[np.argsort(labels[perm], kind="stable")]
    shards = np.array_split(order, num_clients * spc)
    deal = rng.permutation(len(shards)).reshape(num_clients, spc)
    return _finish([np.concatenate([shards[s] for s in row]) for row in deal])


def label_pairs_partition(labels: np.ndarray, num_clients: int, *, num_classes: int | None = None,
                          seed: int = 0) -> list[np.ndarray]:
    """The CDProxSGT paper's split: class c belongs to pair min(c, C-1-c), so with 10 classes and
    5 clients client i holds exactly classes {i, 9-i}.

    With fewer clients than pairs, pair p goes to client p mod K; with more, the clients
    k = p, p + P, p + 2P, ... share pair p's samples in a seeded near-equal split.
    """
    labels = _check(labels, num_clients)
    C = int(num_classes or labels.max() + 1)
    pairs = (C + 1) // 2
    rng = np.random.default_rng(seed)
    pair_of = np.minimum(labels, C - 1 - labels)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for p in range(pairs):
        owners = [k for k in range(num_clients) if k % pairs == p] or [p % num_clients]
        idx = rng.permutation(np.flatnonzero(pair_of == p))
        for k, chunk in zip(owners, np.array_split(idx, len(owners))):
            parts[k].append(chunk)
    out = [np.concatenate(b) if b else np.empty(0, np.int64) for b in parts]
    empty = [k for k, p in enumerate(out) if len(p) == 0]
    if empty:
        raise ConfigError("partition", f"label-pairs leaves client {empty[0]} without samples "
                          f"({C} classes for {num_clients} clients)", "iid, dirichlet")
    return _finish(out)


def partition_indices(labels: np.ndarray, num_clients: int, partition: str = "iid", *, alpha: float = 0.5,
                      shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Dispatch by name; unknown names raise ConfigError listing the choices."""
    if partition == "iid":
        return iid_partition(labels, num_clients, seed=seed)
    if partition == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed)
    if partition == "label-pairs":
        return label_pairs_partition(labels, num_clients, seed=seed)
    if partition == "shards":
        return shards_partition(labels, num_clients, shards_per_client=shards_per_client, seed=seed)
    if partition == "natural":
        raise ConfigError("partition", "'natural' exists only for the synthetic data set", ", ".join(PARTITIONS))
    raise ConfigError("partition", f"unknown partition {partition!r}", ", ".join(PARTITIONS + ("natural",)))


# -- statistics -------------------------------------------------------------------------------
def label_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class counts of one client's labels."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of a label histogram; 0 for an empty one."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def label_skew(counts_per_client: np.ndarray) -> dict[str, float]:
    """How far clients' label mixes are from the pooled mix.

    `counts_per_client` is (clients, classes). Returns the mean per-client label entropy (bits),
    the pooled entropy, and the mean total-variation distance between each client's label
    distribution and the pooled one (0 = IID, -> 1 = disjoint classes).
    """
    counts = np.asarray(counts_per_client, dtype=np.float64)
    sizes = counts.sum(axis=1)
    keep = sizes > 0
    counts, sizes = counts[keep], sizes[keep]
    pooled = counts.sum(axis=0)
    if len(counts) == 0 or pooled.sum() == 0:
        return {"mean_entropy_bits": 0.0, "pooled_entropy_bits": 0.0, "mean_tv_distance": 0.0}
    q = pooled / pooled.sum()
    p = counts / sizes[:, None]
    return {
        "mean_entropy_bits": float(np.mean([entropy_bits(c) for c in counts])),
        "pooled_entropy_bits": entropy_bits(pooled),
        "mean_tv_distance": float(np.mean(0.5 * np.abs(p - q).sum(axis=1))),
    }


def describe(name: str, scheme: str, sizes: np.ndarray, counts_per_client: np.ndarray | None,
             num_classes: int, note: str = "") -> str:
    """The multi-line human-readable summary shared by every FederatedDataset."""
    sizes = np.asarray(sizes)
    lines = [f"{name}: {len(sizes)} clients, partition {scheme}, {int(sizes.sum())} training samples, "
             f"{num_classes} classes",
             f"  samples per client: min {int(sizes.min())}, median {float(np.median(sizes)):g}, "
             f"max {int(sizes.max())}, mean {float(sizes.mean()):.1f}"]
    if counts_per_client is not None and len(counts_per_client):
        ncls = (np.asarray(counts_per_client) > 0).sum(axis=1)
        sk = label_skew(counts_per_client)
        lines.append(f"  classes per client: min {int(ncls.min())}, median {float(np.median(ncls)):g}, "
                     f"max {int(ncls.max())}")
        lines.append(f"  label skew: mean TV distance to pooled label mix {sk['mean_tv_distance']:.3f} "
                     f"(0 = iid); mean client label entropy {sk['mean_entropy_bits']:.2f} bits "
                     f"vs pooled {sk['pooled_entropy_bits']:.2f}")
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines)
