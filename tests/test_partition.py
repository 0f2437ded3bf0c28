"""Partitioners: coverage, balance, skew, no empty clients, seeding, and the federated view."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from thinwire.data.federated import PartitionedDataset
from thinwire.data.datasets import federate
from thinwire.data.loaders import load_dataset
from thinwire.errors import ConfigError
from thinwire.data.partition import (dirichlet_partition, entropy_bits, iid_partition, label_skew,
    partition_indices, shards_partition)


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_dataset("digits").y_train.numpy()


def _assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


def _mean_entropy(parts, labels):
    return float(np.mean([entropy_bits(np.bincount(labels[p], minlength=10)) for p in parts]))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("clients", [1, 7, 100, 1000])
def test_every_sample_assigned_once_and_no_empty_client(digits_labels, scheme, clients):
    parts = partition_indices(digits_labels, clients, scheme, alpha=0.1, seed=3)
    assert len(parts) == clients
    _assert_exact_cover(parts, len(digits_labels))
    assert min(len(p) for p in parts) >= 1
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_sizes_differ_by_at_most_one(digits_labels):
    for k in (3, 10, 100, 1000):
        sizes = [len(p) for p in iid_partition(digits_labels, k, seed=1)]
        assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_much_more_skewed(digits_labels):
    small = dirichlet_partition(digits_labels, 50, alpha=0.05, seed=0)
    large = dirichlet_partition(digits_labels, 50, alpha=100.0, seed=0)
    h_small, h_large = _mean_entropy(small, digits_labels), _mean_entropy(large, digits_labels)
    assert h_large > 2.5  # near the 3.32 bits of a uniform 10-class mix
    assert h_small < 0.5 * h_large
    tv = lambda parts: label_skew(np.stack([np.bincount(digits_labels[p], minlength=10) for p in parts]))
    assert tv(small)["mean_tv_distance"] > 2 * tv(large)["mean_tv_distance"]


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0])
def test_dirichlet_repairs_empty_clients_deterministically(digits_labels, alpha):
    a = dirichlet_partition(digits_labels, 1000, alpha=alpha, seed=5)
    b = dirichlet_partition(digits_labels, 1000, alpha=alpha, seed=5)
    assert min(len(p) for p in a) >= 1
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    _assert_exact_cover(a, len(digits_labels))


def test_shards_limit_classes_per_client(digits_labels):
    min_class = np.bincount(digits_labels).min()
    for spc, clients in ((1, 10), (1, 20), (2, 100), (3, 50)):
        parts = shards_partition(digits_labels, clients, shards_per_client=spc, seed=0)
        ncls = np.array([len(np.unique(digits_labels[p])) for p in parts])
        # A shard is a contiguous run of sorted labels: it holds more than one class only where it
        # straddles one of the 9 class boundaries, so the excess over spc, summed, is <= 9 ...
        assert np.maximum(ncls - spc, 0).sum() <= 9
        # ... and when a shard is no longer than the smallest class it straddles at most one
        # boundary, so no client exceeds 2 * spc classes.
        shard_len = int(np.ceil(len(digits_labels) / (clients * spc)))
        if shard_len <= min_class:
            assert ncls.max() <= 2 * spc
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= spc  # near-equal shards, spc of them each


def test_shards_lower_shard_count_when_data_is_scarce():
    labels = np.repeat(np.arange(3), 10)  # 30 samples
    parts = shards_partition(labels, 12, shards_per_client=5, seed=0)
    assert min(len(p) for p in parts) >= 1
    _assert_exact_cover(parts, 30)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_seeded(digits_labels, scheme):
    a = partition_indices(digits_labels, 20, scheme, seed=11)
    b = partition_indices(digits_labels, 20, scheme, seed=11)
    c = partition_indices(digits_labels, 20, scheme, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_bad_arguments_raise_config_errors(digits_labels):
    with pytest.raises(ConfigError) as e:
        iid_partition(np.zeros(5, np.int64), 6)
    assert "clients" in str(e.value)
    with pytest.raises(ConfigError) as e:
        partition_indices(digits_labels, 10, "pathological")
    assert "dirichlet" in str(e.value)
    with pytest.raises(ConfigError):
        dirichlet_partition(digits_labels, 10, alpha=0.0)
    with pytest.raises(ConfigError):
        shards_partition(digits_labels, 10, shards_per_client=0)
    with pytest.raises(ConfigError) as e:
        federate("digits", 10, "natural")
    assert "synthetic" in str(e.value)
    with pytest.raises(ConfigError):
        federate("digits", 2000)  # more clients than the 1437 training samples


def test_label_skew_is_zero_for_identical_mixes():
    counts = np.array([[5, 5, 0], [10, 10, 0], [1, 1, 0]])
    sk = label_skew(counts)
    assert sk["mean_tv_distance"] == pytest.approx(0.0)
    assert sk["mean_entropy_bits"] == pytest.approx(1.0) == sk["pooled_entropy_bits"]
    assert label_skew(np.array([[4, 0], [0, 4]]))["mean_tv_distance"] == pytest.approx(0.5)


def test_federated_digits_view_and_summary():
    fed = federate("digits", 100, "dirichlet", alpha=0.3, seed=0)
    assert isinstance(fed, PartitionedDataset)
    assert (fed.name, fed.num_clients, fed.num_classes, fed.input_shape) == ("digits", 100, 10, (1, 8, 8))
    sizes = fed.client_sizes()
    assert sizes.sum() == 1437 and sizes.min() >= 1
    x, y = fed.client_data(7)
    assert x.shape == (fed.client_size(7), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    ds = fed.dataset
    assert torch.equal(x, ds.x_train[fed.client_indices(7)])
    xt, yt = fed.test_data()
    assert len(xt) == len(yt) == 360
    text = fed.summary()
    assert "100 clients" in text and "dirichlet" in text
    assert f"min {sizes.min()}" in text and f"max {sizes.max()}" in text
    assert "classes per client" in text and "skew" in text
    with pytest.raises(IndexError):
        fed.client_data(100)
    again = federate("digits", 100, "dirichlet", alpha=0.3, seed=0)
    assert all(torch.equal(again.client_data(k)[1], fed.client_data(k)[1]) for k in range(100))


def test_summary_reports_lower_skew_for_iid_than_shards():
    def tv(text):
        return float(text.split("pooled label mix ")[1].split()[0])
    iid = federate("digits", 50, "iid").summary()
    shards = federate("digits", 50, "shards", shards_per_client=2).summary()
    assert tv(iid) < tv(shards)
