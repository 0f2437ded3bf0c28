"""DEF in federated training: a client trains from the point the server's *additive* update rule
makes the virtual iterate, x + c*e (clients send deltas the server adds), not x - c*e (the
gradient-message convention of all-reduce). The wrong sign made full-participation runs with
randblock + DEF diverge to NaN."""
import torch
from torch import nn

from thinwire.client.kinds import ClientContext, train
from thinwire.compression.feedback import make_memory
from thinwire.task import DEFAULT_TENSOR, Task
from thinwire.training import get_flat, model_spec


def _delta(global_vec, feedback, residual=None, coeff=0.3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    ctx = ClientContext(model=model, spec=model_spec(model), global_vec=global_vec, data=None, x=x, y=y,
                        state={}, feedback=feedback, feedback_coeff=coeff)
    if residual is not None:
        mem = make_memory(feedback, coeff)
        mem.load_state_dict({"kind": feedback, "coeff": coeff, "steps": 1, "residual": residual})
        ctx.memories[DEFAULT_TENSOR] = mem
    task = Task(kind="train", round=3, client_id=1, feedback=feedback, feedback_coeff=coeff,
                params={"lr": 0.1, "local_epochs": 2, "batch_size": 8})
    return train(ctx, task).tensors[DEFAULT_TENSOR]


def _global():
    torch.manual_seed(0)
    return get_flat(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))).clone()


def test_def_client_trains_from_x_plus_c_times_residual():
    x = _global()
    e = 0.5 * torch.randn(x.numel(), generator=torch.Generator().manual_seed(2))
    c = 0.3
    got = _delta(x, "def", residual=e, coeff=c)
    # the same local training without feedback, started at the virtual-iterate side x + c*e
    want = _delta(x + c * e, "none")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # ... and not at x - c*e, where the old code started (the two differ by far more than rounding)
    wrong = _delta(x - c * e, "none")
    assert (got - wrong).abs().max() > 100 * (got - want).abs().max() + 1e-4


def test_def_with_zero_coeff_or_no_residual_is_ef():
    x = _global()
    e = torch.randn(x.numel(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_delta(x, "def", residual=e, coeff=0.0), _delta(x, "ef", residual=e), rtol=0, atol=0)
    torch.testing.assert_close(_delta(x, "def"), _delta(x, "none"), rtol=0, atol=0)
