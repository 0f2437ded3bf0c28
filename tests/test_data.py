"""Data loading: digits split, IDX / CIFAR / npz readers on tiny files written here, error messages,
and the lazy FedProx Synthetic(alpha, beta) generator."""
from __future__ import annotations

import gzip
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch

from thinwire.data.loaders import Dataset, load_dataset, read_idx
from thinwire.data.federated import FederatedDataset
from thinwire.data.datasets import federate
from thinwire.errors import ConfigError, DataError
from thinwire.data.synthetic import SyntheticDataset


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# -- digits -----------------------------------------------------------------------------------
def test_digits_split_shapes_range_and_stratification():
    ds = load_dataset("digits", seed=0)
    assert isinstance(ds, Dataset)
    assert (len(ds.y_train), len(ds.y_test)) == (1437, 360)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert float(ds.x_test.min()) >= 0.0 and float(ds.x_test.max()) <= 1.0
    # stratified: each class's test share is within one sample of 20 %
    tr = np.bincount(ds.y_train.numpy(), minlength=10)
    te = np.bincount(ds.y_test.numpy(), minlength=10)
    assert np.all(np.abs(te - 0.2 * (tr + te)) <= 1.0)


def test_digits_split_is_seeded_and_disjoint():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    # no test image appears in the training set (rows are distinct images up to a few duplicates)
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1).numpy()}
    overlap = sum(r.tobytes() in train_rows for r in a.x_test.reshape(len(a.x_test), -1).numpy())
    assert overlap <= 3


def test_standardize_centres_training_data():
    ds = load_dataset("digits", standardize=True)
    assert abs(float(ds.x_train.mean())) < 1e-4
    assert abs(float(ds.x_train.std()) - 1.0) < 1e-2


def test_unknown_dataset_and_missing_path_are_config_errors():
    with pytest.raises(ConfigError) as e:
        load_dataset("imagenet")
    assert "digits" in _one_line(e) and "cifar10" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        load_dataset("mnist", None)
    assert "data_path" in _one_line(e)
    with pytest.raises(ConfigError):
        federate("imagenet", 10)


# -- IDX --------------------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def _write_idx_dir(root, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader_raw_and_gz(tmp_path, gz, name):
    arrays = _write_idx_dir(tmp_path / "d", gz=gz)
    ds = load_dataset(name, str(tmp_path / "d"))
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == (1, 6, 5)
    assert ds.x_train.shape == (12, 1, 6, 5) and ds.x_test.shape == (5, 1, 6, 5)
    expect = arrays["train-images-idx3-ubyte"].astype(np.float32) / 255.0
    assert np.allclose(ds.x_train[:, 0].numpy(), expect)
    assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)


def test_idx_missing_directory_and_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "nowhere"))
    assert "nowhere" in _one_line(e)
    _write_idx_dir(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "d"))
    assert "t10k-labels-idx1-ubyte" in _one_line(e)


def test_idx_truncated_wrong_magic_and_corrupt_gz(tmp_path):
    _write_idx_dir(tmp_path / "d")
    f = tmp_path / "d" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "d"))
    assert "train-images-idx3-ubyte" in _one_line(e) and "truncated" in _one_line(e)

    _write_idx_dir(tmp_path / "m")
    f = tmp_path / "m" / "train-labels-idx1-ubyte"
    f.write_bytes(b"\x12\x34" + f.read_bytes()[2:])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "m"))
    assert "train-labels-idx1-ubyte" in _one_line(e) and "magic" in _one_line(e)

    _write_idx_dir(tmp_path / "g", gz=True)
    f = tmp_path / "g" / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "g"))
    assert "t10k-images-idx3-ubyte.gz" in _one_line(e)


def test_idx_label_count_mismatch(tmp_path):
    _write_idx_dir(tmp_path / "d")
    (tmp_path / "d" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path / "d"))
    assert "train-labels-idx1-ubyte" in _one_line(e)


# -- CIFAR-10 ---------------------------------------------------------------------------------
def _write_cifar(root, per_batch=4, bytes_keys=True):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        obj = {b"data": data, b"labels": labels} if bytes_keys else {"data": data, "labels": labels}
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        batches[name] = (data, labels)
    return d, batches


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_loader_from_dir_and_parent(tmp_path, bytes_keys):
    d, batches = _write_cifar(tmp_path, bytes_keys=bytes_keys)
    for p in (d, tmp_path):
        ds = load_dataset("cifar10", str(p))
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
        assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
        data, labels = batches["data_batch_1"]
        # rows are channel-major: R plane (1024 values), then G, then B
        assert ds.x_train[0, 0, 0, 0].item() == pytest.approx(data[0, 0] / 255.0)
        assert ds.x_train[0, 1, 0, 0].item() == pytest.approx(data[0, 1024] / 255.0)
        assert ds.x_train[0, 2, 31, 31].item() == pytest.approx(data[0, 3071] / 255.0)
        assert ds.y_train[:4].tolist() == labels
        assert ds.y_test.tolist() == batches["test_batch"][1]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_errors(tmp_path):
    d, _ = _write_cifar(tmp_path / "a")
    (d / "test_batch").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(d))
    assert "test_batch" in _one_line(e)

    d, _ = _write_cifar(tmp_path / "b")
    (d / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(d))
    assert "data_batch_3" in _one_line(e)

    d, _ = _write_cifar(tmp_path / "c")
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [1]}, f)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(d))
    assert "data_batch_2" in _one_line(e) and "refusing" in _one_line(e)

    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path / "missing"))
    assert "missing" in _one_line(e)


# -- npz --------------------------------------------------------------------------------------
def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)  # NHWC colour images
    y = np.repeat(np.arange(5), 10)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load_dataset("npz", str(tmp_path / "a.npz"), seed=3)
    assert (len(ds.y_train), len(ds.y_test)) == (40, 10)
    assert ds.input_shape == (3, 4, 4) and ds.num_classes == 5
    assert np.all(np.bincount(ds.y_test.numpy(), minlength=5) == 2)  # stratified 80/20
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    again = load_dataset("npz", str(tmp_path / "a.npz"), seed=3)
    assert torch.equal(ds.x_train, again.x_train)

    feats = rng.normal(size=(30, 7)).astype(np.float64)
    np.savez(tmp_path / "b.npz", x=feats, y=np.arange(30) % 3, x_test=feats[:6], y_test=np.arange(6) % 3)
    ds = load_dataset("npz", str(tmp_path / "b.npz"))
    assert ds.input_shape == (7,) and ds.x_test.shape == (6, 7) and ds.x_train.dtype == torch.float32
    assert np.allclose(ds.x_train.numpy(), feats.astype(np.float32))


def test_npz_errors(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("npz", str(tmp_path / "none.npz"))
    assert "none.npz" in _one_line(e)
    np.savez(tmp_path / "k.npz", images=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(DataError) as e:
        load_dataset("npz", str(tmp_path / "k.npz"))
    assert "k.npz" in _one_line(e) and "'x'" in _one_line(e)
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError) as e:
        load_dataset("npz", str(tmp_path / "c.npz"))
    assert "c.npz" in _one_line(e)
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(DataError) as e:
        load_dataset("npz", str(tmp_path / "o.npz"))
    assert "o.npz" in _one_line(e)
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 2)), y=np.array([0, 1, -1, 0]))
    with pytest.raises(DataError) as e:
        load_dataset("npz", str(tmp_path / "n.npz"))
    assert "negative" in _one_line(e)


# -- synthetic --------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_independent_of_fleet_size():
    a = federate("synthetic", 50, "natural", seed=7)
    b = federate("synthetic", 1000, "natural", seed=7)
    assert isinstance(a, FederatedDataset) and a.input_shape == (60,) and a.num_classes == 10
    for k in (0, 3, 49):
        xa, ya = a.client_data(k)
        xb, yb = b.client_data(k)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.dtype == torch.float32 and ya.dtype == torch.int64 and xa.shape == (a.client_size(k), 60)
    x0, _ = a.client_data(0)
    x1, _ = a.client_data(1)
    assert x0.shape != x1.shape or not torch.equal(x0, x1)
    c = federate("synthetic", 50, "natural", seed=8)
    assert not torch.equal(c.client_data(0)[0][:10], x0[:10])
    assert torch.equal(pickle.loads(pickle.dumps(a)).client_data(5)[0], a.client_data(5)[0])


def test_synthetic_sizes_follow_the_lognormal_power_law():
    ds = SyntheticDataset(4000, seed=0)
    n = ds.client_sizes()
    total = ds.generated_sizes()
    assert n.min() >= 40 and np.all(n < total)
    assert all(len(ds.client_test_data(k)[1]) == total[k] - n[k] for k in range(5))
    assert np.allclose((total - n) / total, 0.2, atol=0.01)
    # total - 50 = floor(L), L ~ lognormal(4, 2): check the tail fractions on the log scale
    raw = total - 50
    assert abs(np.mean(raw > np.exp(6)) - 0.1587) < 0.03  # P(Z > 1), sd of the estimate ~0.006
    assert abs(np.mean(raw > np.exp(8)) - 0.0228) < 0.012  # P(Z > 2)
    assert abs(np.median(raw) - np.exp(4)) < 8
    assert n.max() / np.median(n) > 20  # heavy tail


def test_synthetic_labels_follow_each_clients_own_model():
    ds = SyntheticDataset(30, alpha=1.0, beta=1.0, seed=1)
    # Synthetic clients are dominated by one or two classes (the input mean v_k drives the logits);
    # fit the most mixed client with >= 100 samples so the check is not trivially one class.
    from thinwire.data.partition import entropy_bits
    mixed = [(entropy_bits(np.bincount(ds.client_data(k)[1].numpy())), k) for k in range(30) if ds.client_size(k) >= 100]
    k = max(mixed)[1]
    x, y = ds.client_data(k)
    assert len(np.unique(y.numpy())) >= 2
    w, b, _ = ds.client_model(k)
    own = np.argmax(x.numpy().astype(np.float64) @ w + b, axis=1)
    assert np.mean(own == y.numpy()) > 0.995  # float32 rounding may flip a near-tie
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=100.0, max_iter=3000).fit(x.numpy(), y.numpy())
    assert clf.score(x.numpy(), y.numpy()) > 0.97  # labels are a linear argmax: separable
    # other clients' models explain these labels poorly (heterogeneity)
    other = [np.mean(np.argmax(x.numpy() @ ds.client_model(j)[0] + ds.client_model(j)[1], axis=1) == y.numpy())
             for j in range(30) if j != k][:10]
    assert np.mean(other) < 0.5


def test_synthetic_iid_shares_one_model_and_test_set():
    ds = federate("synthetic", 20, "iid", seed=2)
    w0, b0, v0 = ds.client_model(0)
    w5, b5, v5 = ds.client_model(5)
    assert np.array_equal(w0, w5) and np.array_equal(b0, b5) and np.all(v0 == 0)
    x, y = ds.test_data()
    assert x.shape[1:] == (60,) and len(x) == len(y) > 0 and int(y.max()) < 10
    assert len(y) == sum(min(len(ds.client_test_data(k)[1]), ds.test_cap) for k in range(20))
    # held-out rows come from their own stream, not from the training rows
    xt, _ = ds.client_test_data(0)
    xtr, _ = ds.client_data(0)
    assert not torch.equal(xt[0], xtr[0])
    assert "20 clients" in ds.summary()


def test_synthetic_rejects_other_partitions():
    with pytest.raises(ConfigError) as e:
        federate("synthetic", 10, "dirichlet")
    assert "natural" in _one_line(e)
    with pytest.raises(ConfigError):
        federate("synthetic", 10, "natural", synthetic_alpha=-1.0)


def test_synthetic_10000_clients_is_lazy_and_fast():
    tracemalloc.start()
    t = time.perf_counter()
    ds = federate("synthetic", 10_000, "natural", seed=0)
    elapsed = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 4_000_000  # a few size vectors, no client data
    x, y = ds.client_data(9_999)
    assert len(x) == ds.client_size(9_999) and len(y) == len(x)
    assert ds.client_sizes().sum() > 10_000 * 40
    xt, yt = ds.test_data()
    assert len(xt) <= ds.test_clients * ds.test_cap and len(xt) == len(yt)
