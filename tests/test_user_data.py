"""A user's own data from Python: tensors, torch Datasets or one data set per client."""
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import thinwire
from thinwire.data.datasets import from_user_data
from thinwire.errors import ConfigError


def blobs(n, seed=0, classes=3, dim=5, sep=6.0):
    """Gaussian blobs, unit variance, class means `sep` apart on the axes: the Bayes error is at
    most (classes - 1) * Phi(-sep / (2 * sqrt(2))) ~ 0.3% for sep = 6, so a linear model reaches ~99%."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    means = torch.zeros(classes, dim)
    means[torch.arange(classes), torch.arange(classes)] = sep
    return means[y] + torch.randn(n, dim, generator=g), y


class ListDataset(Dataset):
    """A plain map-style Dataset (not a TensorDataset): exercises the per-item path."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_pooled_tensors_are_partitioned_and_a_test_split_held_out():
    x, y = blobs(500)
    fed = from_user_data((x, y), clients=7, partition="dirichlet", alpha=0.3, seed=1)
    xt, yt = fed.test_data()
    assert fed.num_clients == 7 and fed.num_classes == 3 and fed.input_shape == (5,)
    assert len(yt) == 100 and fed.client_sizes().sum() == 400
    rows = torch.cat([fed.client_data(k)[0] for k in range(7)] + [xt])
    assert len(torch.unique(rows, dim=0)) == 500  # every sample exactly once, train and test disjoint
    assert fed.client_data(3)[0].dtype == torch.float32 and fed.client_data(3)[1].dtype == torch.int64


def test_a_torch_dataset_gives_the_same_clients_as_its_tensors():
    x, y = blobs(200)
    a = from_user_data((x, y), clients=4, seed=2)
    b = from_user_data(ListDataset(x, y), clients=4, seed=2)
    c = from_user_data(TensorDataset(x, y), clients=4, seed=2)
    for k in range(4):
        for other in (b, c):
            assert torch.equal(a.client_data(k)[0], other.client_data(k)[0])
            assert torch.equal(a.client_data(k)[1], other.client_data(k)[1])


def test_one_dataset_per_client_keeps_the_users_split():
    parts = [blobs(n, seed=s) for s, n in enumerate((30, 50, 80))]
    test = blobs(60, seed=9)
    fed = from_user_data([parts[0], ListDataset(*parts[1]), parts[2]], test)
    assert fed.num_clients == 3 and fed.partition == "natural"
    for k in range(3):
        assert torch.equal(fed.client_data(k)[0], parts[k][0])
    assert torch.equal(fed.test_data()[1], test[1])
    held = from_user_data(parts)  # no test set: 20% of every client held out
    assert held.client_sizes().tolist() == [24, 40, 64] and len(held.test_data()[1]) == 32


@pytest.mark.parametrize("bad, field", [
    ((torch.zeros(4, 2), torch.zeros(3)), "data"),                      # length mismatch
    ((torch.zeros(4, 2), torch.tensor([0.5, 1, 0, 1])), "data"),        # non-integer labels
    ((torch.zeros(4, 2), torch.tensor([0, -1, 0, 1])), "data"),         # negative label
    ("data.csv", "data"),                                               # not data
])
def test_bad_user_data_is_one_config_error(bad, field):
    with pytest.raises(ConfigError) as e:
        from_user_data(bad, clients=2)
    assert e.value.field == field


@pytest.mark.slow
def test_simulate_trains_on_user_tensors_and_per_client_lists(tmp_path):
    x, y = blobs(1200, seed=3)
    common = dict(rounds=6, model="logreg", progress=False, workers=1, out_dir=str(tmp_path), lr=0.1)
    pooled = thinwire.simulate(data=(x, y), clients=6, per_round=3, partition="dirichlet", **common)
    assert pooled.final_accuracy >= 0.95  # Bayes accuracy >= 99.7% (see blobs)
    assert "custom" in (pooled.run_dir / "partition.txt").read_text()
    per_client = [blobs(150, seed=10 + k) for k in range(4)]
    own = thinwire.simulate(data=per_client, test_data=blobs(300, seed=99), per_round=2, **common)
    assert own.final_accuracy >= 0.95
    assert own.run_dir != pooled.run_dir  # unnamed runs never share a directory
