"""Model zoo (issue 21): every factory builds at its stated size, adapts to 1-D signals, images and
character windows, and one SGD step lowers the loss on a fixed batch; evaluation of a sequence
model averages over every position."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinwire.errors import ConfigError
from thinwire.models import build_model, check_model_fits_data, num_parameters
from thinwire.training import evaluate, get_flat


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """These tests leave torch's global RNG as they found it (other test files draw from it)."""
    with torch.random.fork_rng(devices=[]):
        yield

# (name, input shape, classes, stated parameter range)
SIZES = [
    ("resnet20", (3, 32, 32), 10, (0.26e6, 0.28e6)),     # He et al.: 0.27M
    ("resnet18", (3, 32, 32), 10, (11.1e6, 11.25e6)),    # CIFAR ResNet-18: 11.2M
    ("charlm", (64,), 97, (0.9e6, 1.1e6)),               # ~1M
]


@pytest.mark.parametrize("name,shape,classes,bounds", SIZES)
def test_parameter_counts_are_the_stated_sizes(name, shape, classes, bounds):
    d = num_parameters(build_model(name, shape, classes, seed=0))
    assert bounds[0] <= d <= bounds[1]


def test_fedavg_cnn_has_the_papers_parameter_count_on_mnist():
    # McMahan et al. 2017: 1,663,370 parameters on 28x28 MNIST
    assert num_parameters(build_model("fedavg-cnn", (1, 28, 28), 10)) == 1_663_370


def test_one_dimensional_variants_keep_the_weight_count():
    """A k x k kernel becomes k*k taps: only the stem's input channels differ (3 -> 1)."""
    for name, stem in (("resnet20", 16), ("resnet18", 64)):
        d2 = num_parameters(build_model(name, (3, 32, 32), 10))
        d1 = num_parameters(build_model(name, (40,), 10))
        assert d2 - d1 == 2 * stem * 9


def test_groupnorm_variants_have_no_buffers_and_batchnorm_variants_do():
    gn = build_model("resnet20", (40,), 10)
    bn = build_model("resnet20-bn", (40,), 10)
    assert get_flat(gn).numel() == num_parameters(gn)          # the flat vector is exactly d
    assert get_flat(bn).numel() > num_parameters(bn)           # + running mean / var
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gn.modules())


def _batch(name, shape, classes, n=8):
    g = torch.Generator().manual_seed(1)
    if name == "charlm":
        x = torch.randint(0, classes, (n, *shape), generator=g)
        return x.float(), torch.roll(x, -1, dims=1)        # next character of a fixed sequence
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("name,shape,classes", [
    ("resnet20", (40,), 10), ("resnet20", (3, 32, 32), 10), ("resnet20-bn", (40,), 10),
    ("resnet18", (40,), 10), ("fedavg-cnn", (40,), 10), ("fedavg-cnn", (3, 32, 32), 10),
    ("fedavg-cnn", (1, 28, 28), 62), ("charlm", (32,), 97), ("lenet", (1, 8, 8), 10),
])
def test_one_sgd_step_lowers_the_loss_on_a_fixed_batch(name, shape, classes):
    model = build_model(name, shape, classes, seed=0)
    x, y = _batch(name, shape, classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    loss0 = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), y)
    assert float(loss1) < float(loss0.detach())


def test_same_seed_same_weights_different_seed_different():
    a, b, c = (get_flat(build_model("resnet20", (40,), 10, seed=s)) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sequence_evaluation_averages_over_every_position():
    model = build_model("charlm", (16,), 97, seed=0)
    x, y = _batch("charlm", (16,), 97, n=5)
    acc, loss = evaluate(model, x, y, batch_size=2)
    with torch.no_grad():
        logits = model(x)                                   # (n, vocab, T)
    per_pos = logits.permute(0, 2, 1).reshape(-1, 97)       # baseline: one row per position
    assert acc == pytest.approx(float((per_pos.argmax(1) == y.reshape(-1)).float().mean()))
    assert loss == pytest.approx(float(F.cross_entropy(per_pos, y.reshape(-1))), rel=1e-5)


def test_models_refuse_data_they_cannot_read():
    class Text:
        name, targets = "stdlib-text", "next-token"

    class Signals:
        name, targets = "mnist1d", "class"

    with pytest.raises(ConfigError, match="^model:"):
        check_model_fits_data("resnet20", Text())
    with pytest.raises(ConfigError, match="^model:"):
        check_model_fits_data("charlm", Signals())
    check_model_fits_data("charlm", Text())
    with pytest.raises(ConfigError, match="^model:"):
        build_model("resnet20", (5, 2, 2, 2), 10)           # 4-D samples are neither signals nor images
    with pytest.raises(ConfigError, match="^model:"):
        build_model("charlm", (3, 32, 32), 10)
