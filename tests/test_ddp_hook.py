"""The DDP communication hook on a real 2-process gloo group (torch.multiprocessing, file rendezvous)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.slow
K = 2


def _spawn(fn, tmp_path: Path, *args) -> list[dict]:
    import torch.multiprocessing as mp
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_entry, args=(fn, init, str(tmp_path), *args), nprocs=K, join=True)
    return [torch.load(tmp_path / f"out{r}.pt") for r in range(K)]


def _entry(rank, fn, init, out_dir, *args):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=K)
    try:
        torch.save(fn(rank, *args), os.path.join(out_dir, f"out{rank}.pt"))
        dist.barrier()      # no rank tears its gloo pairs down while a peer still uses them (SIGABRT)
    finally:
        dist.destroy_process_group()


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))


# -- identity codec == plain DDP ------------------------------------------------------------------
def _identity_worker(rank):
    from torch.nn.parallel import DistributedDataParallel as DDP
    import thinwire.ddp
    g = torch.Generator().manual_seed(100 + rank)
    out = {}
    for use_hook in (False, True):
        model = _mlp(0)
        ddp = DDP(model)
        if use_hook:
            hook, state = thinwire.ddp.comm_hook(codec="identity", feedback="none", model=model)
            ddp.register_comm_hook(state, hook)
        grads = []
        g.manual_seed(100 + rank)
        for _ in range(3):
            ddp.zero_grad()
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
            F.cross_entropy(ddp(x), y).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        out["hook" if use_hook else "plain"] = grads
        if use_hook:
            out["bytes"] = state.last_step_bytes
    return out


def test_identity_hook_equals_plain_ddp_bit_for_bit(tmp_path):
    res = _spawn(_identity_worker, tmp_path)
    for r in res:
        for gp, gh in zip(r["plain"], r["hook"]):
            for a, b in zip(gp, gh):
                assert torch.equal(a, b)
    # both ranks hold the averaged gradient
    for a, b in zip(res[0]["hook"][-1], res[1]["hook"][-1]):
        assert torch.equal(a, b)
    numel = sum(p.numel() for p in _mlp(0).parameters())
    assert res[0]["bytes"] == 4 * numel  # one dense float32 all-reduce


# -- randblock + EF hook == `thinwire allreduce --method ef` -----------------------------------------
def _ef_worker(rank, steps):
    from torch.nn.parallel import DistributedDataParallel as DDP
    import dataclasses
    import thinwire.ddp
    from thinwire.collective.config import AllreduceConfig
    from thinwire.collective.worker import CollectiveWorker
    from thinwire.collective.allreduce import batch_indices
    from thinwire.data.loaders import load_dataset
    from thinwire.models import build_model

    cfg = AllreduceConfig(workers=K, method="ef", ratio=8.0, dataset="digits", model="mlp", hidden=[32], seed=1,
                          lr=0.05, momentum=0.0, weight_decay=0.0, lr_decay_at="", epochs=1, progress=False,
                          plots=False)
    # the command's worker, on this process group (what the Ray actor runs)
    w = CollectiveWorker(rank, K, "gloo")
    w.configure(dataclasses.asdict(cfg))
    w.train(steps)
    cmd_x = w.snapshot()["x"]

    # a user's own DDP loop with the hook
    ds = load_dataset("digits", seed=1)
    model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=[32], seed=1)
    ddp = DDP(model, bucket_cap_mb=1000)
    hook, state = thinwire.ddp.comm_hook(codec="randblock:ratio=8", feedback="ef", seed=1, model=model)
    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for t in range(steps):
        idx = batch_indices(len(ds.y_train), K, 16, 1, t, rank)
        opt.zero_grad()
        F.cross_entropy(ddp(ds.x_train[idx]), ds.y_train[idx]).backward()
        opt.step()
    hook_x = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    return {"cmd": cmd_x, "hook": hook_x, "bytes": state.last_step_bytes, "cmd_bytes": w.bytes_total / steps}


def test_randblock_ef_hook_equals_the_allreduce_command(tmp_path):
    steps = 20
    res = _spawn(_ef_worker, tmp_path, steps)
    for r in res:
        # the hook keeps e in gradient units (lr applied by the optimizer), the command lr*e: the same
        # iterates up to float32 rounding of the lr factor
        assert torch.allclose(r["hook"], r["cmd"], atol=1e-5, rtol=0), float((r["hook"] - r["cmd"]).abs().max())
        assert r["bytes"] == r["cmd_bytes"]  # the same blocks, one all-reduce
    x0 = None
    from thinwire.data.loaders import load_dataset
    from thinwire.models import build_model
    ds = load_dataset("digits", seed=1)
    x0 = torch.nn.utils.parameters_to_vector(build_model("mlp", ds.input_shape, ds.num_classes, hidden=[32],
                                                          seed=1).parameters())
    assert (res[0]["hook"] - x0).abs().max() > 1e-3  # it moved
    assert torch.equal(res[0]["hook"], res[1]["hook"])


# -- randblock + DEF-A hook with momentum, weight decay and an lr drop == `thinwire allreduce --method defa` --
def _def_worker(rank, steps):
    from torch.nn.parallel import DistributedDataParallel as DDP
    import dataclasses
    import torch.distributed as dist
    import thinwire.ddp
    from thinwire.collective.config import AllreduceConfig
    from thinwire.collective.worker import CollectiveWorker
    from thinwire.collective.allreduce import batch_indices
    from thinwire.data.loaders import load_dataset
    from thinwire.models import build_model

    ds = load_dataset("digits", seed=1)
    out = {}

    def command(method):
        cfg = AllreduceConfig(workers=K, method=method, ratio=8.0, dataset="digits", model="mlp", hidden=[32],
                              seed=1, lr=0.05, momentum=0.9, weight_decay=5e-4, lr_decay_at="0.5", epochs=1,
                              coeff=0.3, progress=False, plots=False)
        w = CollectiveWorker(rank, K, "gloo")
        info = w.configure(dataclasses.asdict(cfg))
        w.train(steps)
        return w.snapshot(), info["total_steps"]

    def user_loop(feedback, hook_side, with_context):
        model = build_model("mlp", ds.input_shape, ds.num_classes, hidden=[32], seed=1)
        ddp = DDP(model, bucket_cap_mb=1000)
        hook, state = thinwire.ddp.comm_hook(codec="randblock:ratio=8", feedback=feedback, coeff=0.3, seed=1,
                                             model=model, momentum=0.9 if hook_side else 0.0,
                                             weight_decay=5e-4 if hook_side else 0.0)
        ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0 if hook_side else 0.9,
                              weight_decay=0.0 if hook_side else 5e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [round(0.5 * total)], gamma=0.1)
        for t in range(steps):
            idx = batch_indices(len(ds.y_train), K, 16, 1, t, rank)
            opt.zero_grad()
            with state.step_context(opt) if with_context else contextlib.nullcontext():
                F.cross_entropy(ddp(ds.x_train[idx]), ds.y_train[idx]).backward()
            opt.step()
            sched.step()
        x = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        with state.output_point():
            x_out = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        return x, x_out

    snap, total = command("defa")
    assert steps > total // 2  # the run crosses the lr drop
    out["cmd_x"], out["cmd_e"] = snap["x"], snap["e"]
    out["hook_x"], out["hook_out"] = user_loop("defa", hook_side=True, with_context=True)
    # the old usage: torch's momentum and weight decay after compression (EF, gradient units)
    out["cmd_ef_x"] = command("ef")[0]["x"]
    out["old_ef_x"], _ = user_loop("ef", hook_side=False, with_context=False)
    # DEF without the step context: a one-line error from the hook, not silently EF
    try:
        user_loop("def", hook_side=True, with_context=False)
        out["no_context"] = None
    except Exception as e:  # raised inside DDP's backward
        out["no_context"] = str(e)
    dist.barrier()
    return out


def test_randblock_defa_hook_with_momentum_equals_the_allreduce_command(tmp_path):
    res = _spawn(_def_worker, tmp_path, 30)
    # same rule (local momentum and wd at y before compression, lr inside the error, lr drop, gradient
    # at x - c*e), so the same iterates up to float32 rounding (x - lr*(D/lr) vs x - D each step)
    tol = 1e-5
    for r in res:
        assert torch.allclose(r["hook_x"], r["cmd_x"], atol=tol, rtol=0), float((r["hook_x"] - r["cmd_x"]).abs().max())
    # DEF-A outputs x - mean_k e_k on every rank
    want = res[0]["cmd_x"] - (res[0]["cmd_e"] + res[1]["cmd_e"]) / 2
    assert float((res[0]["cmd_e"] - res[1]["cmd_e"]).abs().max()) > 1e-4  # the residuals differ per rank
    for r in res:
        assert torch.allclose(r["hook_out"], want, atol=tol, rtol=0)
    # baseline: momentum after compression (the old usage) is a different rule; the check above sees it
    gap = float((res[0]["old_ef_x"] - res[0]["cmd_ef_x"]).abs().max())
    assert gap > 100 * tol, gap
    assert "step_context" in res[0]["no_context"] and "feedback" in res[0]["no_context"]


# -- EDEN hook is unbiased --------------------------------------------------------------------------
def _eden_worker(rank, steps, bits):
    from torch.nn.parallel import DistributedDataParallel as DDP
    import thinwire.ddp
    d = 3000
    lin = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
    ddp = DDP(lin)
    hook, state = thinwire.ddp.comm_hook(codec=f"eden:bits={bits}", feedback="none", seed=5, model=lin)
    ddp.register_comm_hook(state, hook)
    c = torch.randn(1, d, generator=torch.Generator().manual_seed(7 + rank)) * (1 + rank)
    acc = torch.zeros(d, dtype=torch.float64)
    for _ in range(steps):
        ddp.zero_grad()
        ddp(c).sum().backward()  # gradient of w.c is c
        acc += lin.weight.grad.reshape(-1).double()
    return {"mean": acc / steps, "c": c.reshape(-1), "bytes": state.last_step_bytes, "last": lin.weight.grad.clone()}


def test_eden_hook_is_unbiased_across_steps(tmp_path):
    from thinwire.compression.bitpack import packed_size
    from thinwire.compression.eden import chunk_sizes, theoretical_vnmse
    from thinwire.compression.hadamard import next_pow2
    steps, bits, d = 200, 2, 3000
    res = _spawn(_eden_worker, tmp_path, steps, bits)
    true = (res[0]["c"] + res[1]["c"]).double() / 2
    assert torch.equal(res[0]["last"], res[1]["last"])  # every rank decodes the same mean
    err = float(((res[0]["mean"] - true) ** 2).sum())
    # per step E||est - mean||^2 = (1/n^2) sum_k vNMSE ||c_k||^2; T independent rotations divide by T.
    expected = theoretical_vnmse(bits) * sum(float(r["c"].double().norm() ** 2) for r in res) / K ** 2 / steps
    assert err < 3 * expected, (err, expected)
    # and it is really compressed noise, not an exact copy (the error is of the predicted size)
    assert err > expected / 10, (err, expected)
    # bytes: 2-bit codes of the padded chunks plus one float32 scale per chunk, all-gathered once
    # (3000 = 2048 + 952 -> padded 2048 + 1024); the length is known to all, so nothing else travels
    chunks = chunk_sizes(d)
    assert res[0]["bytes"] == packed_size(sum(next_pow2(n) for n in chunks), bits) + 4 * len(chunks)
