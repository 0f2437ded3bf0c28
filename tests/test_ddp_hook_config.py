"""The DDP hook's settings and its constraint on the optimizer: one-line ConfigErrors (no process group needed)."""
from __future__ import annotations

import pytest
import torch

import thinwire.ddp
from thinwire.errors import ConfigError


def _params():
    return torch.nn.Linear(4, 2).parameters()


@pytest.mark.parametrize("kw, field", [({"feedback": "dgc"}, "feedback"), ({"coeff": 1.5}, "coeff"),
                                       ({"momentum": 1.0}, "momentum"), ({"weight_decay": -1e-4}, "weight_decay")])
def test_bad_hook_settings_are_config_errors(kw, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        thinwire.ddp.comm_hook(codec="randblock:ratio=8", **kw)


@pytest.mark.parametrize("feedback", ["ef", "def", "defa"])
def test_optimizer_momentum_with_error_feedback_is_refused(feedback):
    _, state = thinwire.ddp.comm_hook(codec="randblock:ratio=8", feedback=feedback, momentum=0.9)
    with pytest.raises(ConfigError, match=r"^optimizer\.param_groups\[0\]\.momentum: .*comm_hook\(momentum"):
        with state.step_context(torch.optim.SGD(_params(), lr=0.1, momentum=0.9)):
            pass
    with pytest.raises(ConfigError, match=r"^optimizer\.param_groups\[0\]\.weight_decay: "):
        with state.step_context(torch.optim.SGD(_params(), lr=0.1, weight_decay=1e-4)):
            pass
    with pytest.raises(ConfigError, match="^optimizer: Adam"):
        with state.step_context(torch.optim.Adam(_params(), lr=0.1)):
            pass
    with state.step_context(torch.optim.SGD(_params(), lr=0.1)):  # plain SGD is what the rule needs
        pass


def test_unbiased_codec_without_feedback_accepts_any_optimizer():
    _, state = thinwire.ddp.comm_hook(codec="eden:bits=2", feedback="none")
    with state.step_context(torch.optim.SGD(_params(), lr=0.1, momentum=0.9, weight_decay=1e-4)):
        pass
    # but hook-side momentum with optimizer momentum would apply it twice
    _, state = thinwire.ddp.comm_hook(codec="eden:bits=2", feedback="none", momentum=0.9)
    with pytest.raises(ConfigError, match="momentum"):
        with state.step_context(torch.optim.SGD(_params(), lr=0.1, momentum=0.9)):
            pass


def test_step_context_leaves_a_plain_compressed_gradient_in_gradient_units():
    _, state = thinwire.ddp.comm_hook(codec="eden:bits=2", feedback="none")
    with state.step_context(torch.optim.SGD(_params(), lr=0.0, momentum=0.9)):  # e.g. warm-up from 0
        assert state.lrs is None  # the hook will not divide by the lr
    _, state = thinwire.ddp.comm_hook(codec="randblock:ratio=8", feedback="def")
    opt = torch.optim.SGD(_params(), lr=0.1)
    opt.add_param_group({"params": torch.nn.Linear(2, 1).parameters(), "lr": 0.01})
    with state.step_context(opt):
        assert sorted(set(state.lrs.values())) == [0.01, 0.1]  # per parameter group
