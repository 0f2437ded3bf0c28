"""Offline data harder than digits (issue 21): MNIST-1D generated locally (never downloaded), the
standard library's source as a per-module text corpus, and CIFAR-10 / FEMNIST-shaped files the
user brings, each feeding the zoo's models. Partitions are deterministic given the seed."""
from __future__ import annotations

import pickle
import random
import socket

import numpy as np
import pytest
import torch

from thinwire.config import RunConfig, build
from thinwire.data.datasets import federate
from thinwire.data.loaders import load_dataset
from thinwire.data.text import VOCAB_SIZE, StdlibTextDataset, decode_ids, encode_text, stdlib_units
from thinwire.errors import ConfigError
from thinwire.models import build_model, model_from_config
from thinwire.training import evaluate, local_train


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """These tests leave torch's global RNG as they found it (other test files draw from it)."""
    with torch.random.fork_rng(devices=[]):
        yield


def _indices(fd):
    return [fd.client_indices(k).tolist() for k in range(fd.num_clients)]


# -- MNIST-1D ---------------------------------------------------------------------------------
def test_mnist1d_is_generated_without_network_and_leaves_global_rngs_alone(monkeypatch):
    from thinwire.data import mnist1d

    mnist1d._generate.cache_clear()

    def no_network(*a, **k):
        raise AssertionError("MNIST-1D tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    import requests
    monkeypatch.setattr(requests, "get", no_network)
    random.seed(7)
    np.random.seed(7)
    before = (random.random(), np.random.random())
    random.seed(7)
    np.random.seed(7)
    ds = load_dataset("mnist1d")
    assert (random.random(), np.random.random()) == before   # the generator's set_seed(42) is undone
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.input_shape == (40,) and ds.num_classes == 10
    counts = np.bincount(ds.y_train.numpy(), minlength=10)
    assert counts.min() > 300                                 # 500 per class before the 80/20 split
    again = load_dataset("mnist1d")
    assert torch.equal(ds.x_train, again.x_train)


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards"])
def test_mnist1d_partitions_are_deterministic_in_the_seed(partition):
    a = federate("mnist1d", 20, partition, seed=1)
    b = federate("mnist1d", 20, partition, seed=1)
    c = federate("mnist1d", 20, partition, seed=2)
    assert _indices(a) == _indices(b)
    assert _indices(a) != _indices(c)
    assert sorted(i for p in _indices(a) for i in p) == list(range(4000))


# -- the standard library as text --------------------------------------------------------------
def test_vocabulary_round_trips_ascii_and_maps_the_rest_to_unknown():
    text = "def f(x):\n    return x ~ 1\n"
    ids = encode_text(text)
    assert decode_ids(ids) == text and ids.max() < VOCAB_SIZE
    assert encode_text("\té").tolist() == [0, 0]


@pytest.fixture(scope="module")
def text_sets():
    return {s: StdlibTextDataset(12, seed=s, seq_len=32, max_windows=40) for s in (0, 0, 1)} | \
        {"again": StdlibTextDataset(12, seed=0, seq_len=32, max_windows=40)}


def test_text_clients_are_modules_chosen_by_the_seed(text_sets):
    a, b, c = text_sets[0], text_sets["again"], text_sets[1]
    assert a.modules == b.modules and _indices(a) == _indices(b)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.test_data()[0], b.test_data()[0])
    assert a.modules != c.modules
    assert len(set(a.modules)) == 12


def test_text_split_is_by_module(text_sets):
    """Every window of client k is a piece of module k's own source, and labels are the next characters."""
    ds = text_sets[0]
    units = stdlib_units()
    for k in range(ds.num_clients):
        source = decode_ids(encode_text("\n".join(f.read_text(encoding="utf-8", errors="replace")
                                                  for f in units[ds.client_module(k)])))
        x, y = ds.client_data(k)
        assert 1 <= len(x) <= 40 and x.shape[1:] == (32,) and y.shape == x.shape
        for w in range(0, len(x), 7):
            assert decode_ids(x[w]) in source
            assert torch.equal(x[w, 1:].long(), y[w, :-1])
            assert decode_ids(x[w]) + decode_ids(y[w, -1:]) in source


def test_text_iid_deals_the_same_windows_evenly():
    nat = StdlibTextDataset(6, seed=3, seq_len=32, max_windows=30)
    iid = StdlibTextDataset(6, seed=3, seq_len=32, max_windows=30, partition="iid")
    assert torch.equal(nat.x_train, iid.x_train)
    sizes = iid.client_sizes()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == nat.client_sizes().sum()


def test_text_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="^clients:"):
        StdlibTextDataset(100_000)
    with pytest.raises(ConfigError, match="^partition:"):
        build(RunConfig, {"dataset": "stdlib-text", "model": "charlm", "partition": "dirichlet"})
    with pytest.raises(ConfigError, match="^model:"):
        build(RunConfig, {"dataset": "stdlib-text", "model": "resnet20", "partition": "natural"})
    with pytest.raises(ConfigError, match="^model:"):
        build(RunConfig, {"dataset": "mnist1d", "model": "charlm"})
    build(RunConfig, {"dataset": "stdlib-text", "model": "charlm", "partition": "natural", "clients": 20,
                      "per_round": 5})


def test_char_lm_learns_from_one_module():
    """A few local epochs on one client beat the unigram baseline computed from the same windows."""
    ds = StdlibTextDataset(4, seed=0, seq_len=32, max_windows=64)
    cfg = build(RunConfig, {"dataset": "stdlib-text", "model": "charlm", "partition": "natural", "clients": 4,
                            "per_round": 2})
    torch.manual_seed(0)
    model = model_from_config(cfg, ds)
    k = int(np.argmax(ds.client_sizes()))
    x, y = ds.client_data(k)
    unigram = float(np.bincount(y.reshape(-1).numpy()).max() / y.numel())
    local_train(model, x, y, epochs=3, batch_size=16, lr=0.1, momentum=0.9, seed=0)
    acc, _ = evaluate(model, x, y)
    assert acc > unigram + 0.05


# -- CIFAR-10 / FEMNIST-shaped files the user brings ---------------------------------------------
def _write_cifar(directory, n_per_batch=6):
    rng = np.random.default_rng(0)
    directory.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)]}
        (directory / name).write_bytes(pickle.dumps(batch))


def test_cifar_shaped_files_train_resnet20(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    fd = federate("cifar10", 3, "iid", seed=0, path=str(tmp_path))
    assert fd.input_shape == (3, 32, 32) and sum(fd.client_sizes()) == 30
    model = build_model("resnet20", fd.input_shape, fd.num_classes, seed=0)
    x, y = fd.client_data(0)
    loss, steps = local_train(model, x, y, batch_size=4, lr=0.02)
    assert steps == 3 and np.isfinite(loss)
    acc, _ = evaluate(model, *fd.test_data())
    assert 0.0 <= acc <= 1.0


def test_femnist_shaped_npz_trains_the_fedavg_cnn(tmp_path):
    """FEMNIST: 28x28 grey characters, 62 classes, here from a user .npz."""
    rng = np.random.default_rng(0)
    path = tmp_path / "femnist.npz"
    np.savez(path, x=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), y=np.arange(64) % 62)
    fd = federate("npz", 4, "iid", seed=0, path=str(path))
    assert fd.input_shape == (1, 28, 28) and fd.num_classes == 62
    model = build_model("fedavg-cnn", fd.input_shape, fd.num_classes, seed=0)
    x, y = fd.client_data(1)
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(model(x), y))
    local_train(model, x, y, epochs=3, batch_size=len(x), lr=0.02)
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(model(x), y))
    assert after < before
