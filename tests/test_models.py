"""Model zoo: output shapes across input shapes, user factories, errors, seeded init, sizes."""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from thinwire.errors import ConfigError
from thinwire.models import build_model, model_size_bytes

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", ["mlp", "logreg", "lenet"])
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shapes_for_images(name, shape):
    model = build_model(name, shape, 10)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10)
    loss = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2]))
    loss.backward()
    # every parameter gets a gradient, and it is the loss's derivative: along a random direction u
    # the central difference (f(w + eps u) - f(w - eps u)) / 2 eps (float64, eps = 1e-6, error
    # O(eps^2) away from ReLU kinks) equals <grad, u> to 1e-6 relative.
    assert all(p.grad is not None for p in model.parameters())
    x, y = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    m64 = model.double()
    m64.zero_grad()
    nn.functional.cross_entropy(m64(x.double()), y).backward()
    w = torch.nn.utils.parameters_to_vector(m64.parameters()).detach()
    g = torch.cat([p.grad.reshape(-1) for p in m64.parameters()])
    u = torch.randn(w.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-6

    def f(v):
        torch.nn.utils.vector_to_parameters(v, m64.parameters())
        with torch.no_grad():
            return float(nn.functional.cross_entropy(m64(x.double()), y))
    fd = (f(w + eps * u) - f(w - eps * u)) / (2 * eps)
    assert fd == pytest.approx(float(g @ u), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_flat_features(name):
    model = build_model(name, (60,), 7, hidden=(32,))
    assert model(torch.randn(5, 60)).shape == (5, 7)


def test_lenet_sizes_itself_from_the_input():
    small = build_model("lenet", (1, 8, 8), 10)
    mnist = build_model("lenet", (1, 28, 28), 10)
    assert model_size_bytes(small) < model_size_bytes(mnist)
    assert build_model("lenet", (3, 20, 12), 4)(torch.rand(2, 3, 20, 12)).shape == (2, 4)
    with pytest.raises(ConfigError) as e:
        build_model("lenet", (60,), 10)
    assert "mlp" in str(e.value)


def test_mlp_hidden_sizes_and_model_size():
    model = build_model("mlp", (1, 8, 8), 10, hidden=(32, 16))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    expect = 4 * (64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10)
    assert model_size_bytes(model) == expect
    assert model_size_bytes(build_model("logreg", (60,), 10)) == 4 * (60 * 10 + 10)
    with pytest.raises(ConfigError) as e:
        build_model("mlp", (60,), 10, hidden=(0,))
    assert "hidden" in str(e.value)


def test_bad_model_names():
    for bad in ("resnet", "", "nosuch_module_xyz:make", "thinwire.models:no_such_function"):
        with pytest.raises(ConfigError) as e:
            build_model(bad, (60,), 10)
        msg = str(e.value)
        assert msg.startswith("model:") and "\n" not in msg
    with pytest.raises(ConfigError) as e:
        build_model("resnet", (60,), 10)
    assert "mlp, lenet, logreg" in str(e.value)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "tw_user_models.py").write_text(textwrap.dedent("""
        import math
        from torch import nn

        def make(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

        def make_kw(**kwargs):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(kwargs["input_shape"]), kwargs["num_classes"]))

        def fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

        def only_classes(num_classes, bias=True):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes, bias=bias))

        def needs_more(input_shape, num_classes, depth):
            return nn.Linear(1, 1)

        def not_a_model():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tw_user_models"


def test_user_factory(user_module):
    assert build_model(f"{user_module}:make", (1, 8, 8), 5)(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    assert build_model(f"{user_module}:make_kw", (60,), 4)(torch.rand(2, 60)).shape == (2, 4)
    assert build_model(f"{user_module}:fixed", (1, 8, 8), 10)(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert build_model(f"{user_module}:only_classes", (1, 8, 8), 6)(torch.rand(2, 1, 8, 8)).shape == (2, 6)
    with pytest.raises(ConfigError) as e:
        build_model(f"{user_module}:needs_more", (60,), 10)
    assert "depth" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_model(f"{user_module}:not_a_model", (60,), 10)
    assert "nn.Module" in str(e.value)


def test_init_is_reproducible_under_torch_seed():
    def params(m):
        return [p.detach().clone() for p in m.parameters()]
    for name in ("mlp", "lenet", "logreg"):
        torch.manual_seed(123)
        a = params(build_model(name, (1, 8, 8), 10))
        torch.manual_seed(123)
        b = params(build_model(name, (1, 8, 8), 10))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # seed= gives the same weights without touching the caller's RNG stream
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    c = params(build_model("mlp", (60,), 10, seed=9))
    assert torch.equal(torch.random.get_rng_state(), before)
    d = params(build_model("mlp", (60,), 10, seed=9))
    e = params(build_model("mlp", (60,), 10, seed=10))
    assert all(torch.equal(x, y) for x, y in zip(c, d))
    assert not torch.equal(c[0], e[0])
