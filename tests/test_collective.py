"""Step math of the all-reduce engine over K simulated workers (no processes), config and CLI errors."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thinwire import config
from thinwire.collective.config import AllreduceConfig
from thinwire.collective.allreduce import (batch_indices, finish, grad_point, init_state, lr_at,
    output_point, prepare, simulate_step, step_blocks, steps_per_epoch, straggler_at)
from thinwire.collective.group import resolve_backend
from thinwire.collective.reducer import Reducer, simulate_mean
from thinwire.compression.randblock import kept_count
from thinwire.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# -- a toy problem: K workers, each with its own noisy least-squares objective ------------------------
def _toy(k_workers: int, d: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(32, d, generator=g, dtype=dtype) / math.sqrt(d) for _ in range(k_workers)]
    b = [torch.randn(32, generator=g, dtype=dtype) for _ in range(k_workers)]
    noise = torch.Generator().manual_seed(seed + 1)

    def grad_fn(k: int, y: torch.Tensor) -> torch.Tensor:
        return a[k].T @ (a[k] @ y - b[k]) / 32 + 0.01 * torch.randn(d, generator=noise, dtype=dtype)

    return grad_fn, torch.randn(d, generator=g, dtype=dtype)


def _segments(d: int) -> tuple[int, ...]:
    return (d // 2, d // 4, d - d // 2 - d // 4)


def _run_sim(method: str, coeff: float, *, k=4, d=48, ratio=8.0, steps=60, lr=0.05, mu=0.9, wd=1e-3,
             dtype=torch.float64, trace=False):
    grad_fn, x0 = _toy(k, d, dtype=dtype)
    states = [init_state(method, x0, coeff) for _ in range(k)]
    reducer = Reducer("identity" if method == "sgd" else f"randblock:ratio={ratio}", seed=3)
    rows = []
    for t in range(steps):
        xhat = states[0].x - torch.stack([s.error for s in states]).mean(0)
        simulate_step(states, grad_fn, lr=lr, momentum=mu, weight_decay=wd, reducer=reducer, step=t,
                      segments=_segments(d))
        if trace:
            mbar = torch.stack([s.m for s in states]).mean(0)
            xhat_next = states[0].x - torch.stack([s.error for s in states]).mean(0)
            rows.append((xhat, mbar, xhat_next))
    return states, rows


def test_def_with_zero_coeff_is_ef_bit_for_bit():
    ef, _ = _run_sim("ef", 0.0, dtype=torch.float32)
    de, _ = _run_sim("def", 0.0, dtype=torch.float32)
    for a, b in zip(ef, de):
        assert torch.equal(a.x, b.x) and torch.equal(a.m, b.m) and torch.equal(a.error, b.error)
    # and a non-zero coefficient really changes the trajectory
    d3, _ = _run_sim("def", 0.3, dtype=torch.float32)
    assert not torch.equal(d3[0].x, ef[0].x)


@pytest.mark.parametrize("method,coeff", [("ef", 0.0), ("def", 0.3), ("def", 1.0), ("defa", 0.3)])
def test_iterate_averaging_identity(method, coeff):
    """x_hat_{t+1} = x_hat_t - lr * mean_k m_k with x_hat = x - mean_k e_k (spec section 7), for any c."""
    lr = 0.05
    states, rows = _run_sim(method, coeff, lr=lr, dtype=torch.float32, trace=True)
    assert rows
    for xhat, mbar, xhat_next in rows:
        assert torch.allclose(xhat_next, xhat - lr * mbar, atol=1e-5, rtol=0)
    # all workers hold the same shared model x, but their residuals differ
    assert all(torch.equal(s.x, states[0].x) for s in states)
    assert not torch.equal(states[0].error, states[1].error)


def test_residual_is_zero_on_the_sent_blocks():
    """Coordinates sent at step t have e_{t+1} = 0 on every worker, so x equals x_hat there (spec 7)."""
    k, d = 3, 48
    grad_fn, x0 = _toy(k, d)
    states = [init_state("def", x0, 0.3) for _ in range(k)]
    reducer = Reducer("randblock:ratio=8", seed=1)
    for t in range(5):
        blocks = step_blocks(_segments(d), 8.0, seed=1, step=t)
        simulate_step(states, grad_fn, lr=0.1, momentum=0.9, weight_decay=0.0, reducer=reducer, step=t,
                      segments=_segments(d))
    mask = torch.zeros(d, dtype=torch.bool)
    for s, n in blocks:
        mask[s:s + n] = True
    assert kept_count(blocks) == sum(max(1, n // 8) for n in _segments(d))
    for st in states:
        assert torch.all(st.error[mask] == 0) and torch.any(st.error[~mask] != 0)


def test_ratio_one_ef_is_dense_momentum_sgd():
    """With ratio 1 nothing is dropped (e stays 0), so EF's mean of local momenta is momentum SGD."""
    ef, _ = _run_sim("ef", 0.0, ratio=1.0)
    sgd, _ = _run_sim("sgd", 0.0)
    assert torch.allclose(ef[0].x, sgd[0].x, atol=1e-12, rtol=0)
    assert torch.count_nonzero(ef[0].error) == 0


def test_dense_sgd_matches_torch_sgd_on_the_combined_batch():
    """K simulated dense workers on equal shards == torch.optim.SGD on the union (same loss scale)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(200, 10, generator=g), torch.randint(0, 3, (200,), generator=g)
    k, b = 2, 8
    x0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    states = [init_state("sgd", x0) for _ in range(k)]
    for t in range(20):
        idx = [batch_indices(200, k, b, 5, t, r) for r in range(k)]

        def grad_fn(r, y, idx=idx):
            torch.nn.utils.vector_to_parameters(y, model.parameters())
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[idx[r]]), ys[idx[r]]).backward()
            return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

        simulate_step(states, grad_fn, lr=0.1, momentum=0.9, weight_decay=1e-3, reducer=Reducer("identity"), step=t)
        allidx = torch.cat(idx)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(xs[allidx]), ys[allidx]).backward()
        opt.step()
    want = torch.nn.utils.parameters_to_vector(ref.parameters()).detach()
    assert torch.allclose(states[0].x, want, atol=1e-5, rtol=0)


def test_defa_outputs_the_averaged_iterate_and_def_the_shared_model():
    states, _ = _run_sim("defa", 0.3, steps=10)
    ebar = torch.stack([s.error for s in states]).mean(0)
    assert torch.equal(output_point(states[0], ebar), states[0].x - ebar)
    plain, _ = _run_sim("def", 0.3, steps=10)
    assert torch.equal(output_point(plain[0], ebar), plain[0].x)
    # DEF's gradient point is x - c*e, EF's is x
    assert torch.allclose(grad_point(plain[0]), plain[0].x - 0.3 * plain[0].error)
    ef, _ = _run_sim("ef", 0.0, steps=10)
    assert grad_point(ef[0]) is ef[0].x


def test_prepare_finish_payload_is_one_buffer_of_the_blocks():
    d = 4096
    segs = (2048, 1024, 1000, 24)
    blocks = step_blocks(segs, 64, seed=0, step=7)
    st = init_state("def", torch.zeros(d, dtype=torch.float32), 0.3)
    p = prepare(st, torch.ones(d), st.x, lr=0.1, momentum=0.9, weight_decay=0.0)
    reducer = Reducer("randblock:ratio=64", seed=0)
    (red,) = simulate_mean(reducer, [p], step=7, segments=segs)
    # the all-reduced buffer holds only the blocks: 4 bytes per kept value
    assert red.payload_bytes == 4 * (32 + 16 + 15 + 1)
    finish(st, p, red, lr=0.1, momentum=0.9)
    assert math.isclose(float(-st.x.sum()), 0.1 * (32 + 16 + 15 + 1), rel_tol=1e-6)
    # the residual is p with exactly the step's blocks zeroed
    mask = torch.zeros(d, dtype=torch.bool)
    for s0, n in blocks:
        mask[s0:s0 + n] = True
    assert torch.all(st.error[mask] == 0) and torch.allclose(st.error[~mask], torch.full_like(st.error[~mask], 0.1))
    # blocks are shared: any worker with the same seed and step draws the same ones
    assert step_blocks(segs, 64, seed=0, step=7) == blocks
    assert step_blocks(segs, 64, seed=0, step=8) != blocks


def test_lr_schedule_warmup_and_step_decay():
    kw = dict(base_lr=0.1, total_steps=100, steps_per_epoch=10, decay_at=(0.5, 0.75), decay=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(49, **kw) == pytest.approx(0.1)
    assert lr_at(50, **kw) == pytest.approx(0.01)
    assert lr_at(75, **kw) == pytest.approx(0.001)
    warm = dict(kw, warmup_epochs=2.0)
    assert lr_at(0, **warm) == pytest.approx(0.1 / 20)
    assert lr_at(19, **warm) == pytest.approx(0.1)
    assert lr_at(20, **warm) == pytest.approx(0.1)


def test_batches_partition_each_epoch_across_ranks():
    n, k, b = 103, 3, 4
    spe = steps_per_epoch(n, k, b)
    assert spe == 8
    seen = torch.cat([batch_indices(n, k, b, 0, t, r) for t in range(spe) for r in range(k)])
    assert seen.numel() == spe * k * b and seen.unique().numel() == seen.numel()
    # the next epoch is a different shuffle
    assert not torch.equal(batch_indices(n, k, b, 0, 0, 0), batch_indices(n, k, b, 0, spe, 0))


def test_random_straggler_is_seeded_and_covers_all_ranks():
    picks = [straggler_at(t, workers=4, seed=2, random_pick=True) for t in range(400)]
    assert picks == [straggler_at(t, workers=4, seed=2, random_pick=True) for t in range(400)]
    counts = [picks.count(r) for r in range(4)]
    # each count is Binomial(400, 1/4): mean 100, sd ~8.7; 5 sd either side
    assert all(100 - 44 <= c <= 100 + 44 for c in counts)
    assert straggler_at(3, workers=4, seed=2, worker=1) == 1
    assert straggler_at(3, workers=4, seed=2) == -1


# -- configuration errors ------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,needle", [
    ("backend", "mpi", "backend"), ("ratio", 0.5, "ratio"), ("method", "topk", "method"),
    ("coeff", 1.5, "coeff"), ("workers", 0, "workers"), ("straggler_worker", 4, "straggler_worker"),
    ("straggler_factor", 0.5, "straggler_factor"), ("lr_decay_at", "0.5,1.5", "lr_decay_at"),
    ("dataset", "cifar10", "data_path"),
])
def test_bad_config_is_a_one_line_config_error(field, value, needle):
    with pytest.raises(ConfigError) as ei:
        config.load(AllreduceConfig, overrides={field: value})
    msg = str(ei.value)
    assert msg.startswith(needle) and "\n" not in msg


def test_nccl_without_gpus_is_a_config_error():
    with pytest.raises(ConfigError, match="nccl needs one GPU per worker"):
        resolve_backend("nccl", 0, 4)
    assert resolve_backend("auto", 0, 4) == "gloo"
    assert resolve_backend("gloo", 8, 4) == "gloo"


def _thinwire(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "thinwire"
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "thinwire.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args,needle", [
    (["--backend", "mpi"], "backend: unknown value 'mpi'; allowed: auto, gloo, nccl"),
    (["--ratio", "0.5"], "ratio: 0.5 is out of range"),
    (["--ratio", "many"], "ratio: expected a number"),
    (["--straggler-worker", "5"], "straggler_worker: 5 is out of range"),
] + ([] if torch.cuda.is_available() else [(["--backend", "nccl"], "backend: nccl needs one GPU per worker")]))
def test_cli_bad_input_returns_2_with_one_line(args, needle, capsys, monkeypatch):
    from thinwire import cli
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv
    assert cli.main(["allreduce", "--workers", "2", *args]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], lines


def test_installed_cli_exits_2_on_a_bad_ratio():
    exe = Path(sys.executable).parent / "thinwire"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "thinwire.cli"]
    r = subprocess.run([*cmd, "allreduce", "--ratio", "0"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["thinwire allreduce: error: ratio: 0.0 is out of range; allowed: [1.0, inf]"], r.stderr


@pytest.mark.parametrize("field,value,needle", [("codec", "zip", "codec"), ("feedback", "sometimes", "feedback")])
def test_bad_codec_or_feedback_is_a_config_error(field, value, needle):
    with pytest.raises(ConfigError) as ei:
        config.load(AllreduceConfig, overrides={field: value})
    assert str(ei.value).startswith(needle) and "\n" not in str(ei.value)
