"""The all-reduce worker: one Ray actor per rank of the `torch.distributed` group, holding its data
shard, model and `WorkerState`, running `thinwire.collective.allreduce`'s step around one
`Reducer` call per step."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from thinwire.collective.allreduce import (
    batch_indices,
    finish,
    grad_point,
    init_state,
    lr_at,
    needs_local,
    output_point,
    prepare,
    steps_per_epoch,
    straggler_at,
)
from thinwire.collective.config import AllreduceConfig
from thinwire.collective.group import Peer
from thinwire.collective.reducer import Reducer
from thinwire.errors import ConfigError
from thinwire.training import flat_grad

log = logging.getLogger(__name__)


# -- model <-> flat vector ------------------------------------------------------------------------
def param_segments(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(p.numel() for p in model.parameters())


def load_params(model: torch.nn.Module, vec: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(vec, model.parameters())


def float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


# -- the worker actor -------------------------------------------------------------------------------
class CollectiveWorker(Peer):
    """One process-group rank. Wrapped with `ray.remote` by `WorkerGroup`; thin around the step math."""

    def __init__(self, rank: int, world: int, backend: str, threads: int = 1) -> None:
        super().__init__(rank, world, backend, threads)
        self.cfg: AllreduceConfig | None = None

    # run setup -------------------------------------------------------------------------------------
    def configure(self, cfg_dict: dict[str, Any]) -> dict[str, Any]:
        """Build data, model and optimiser state for one run (the process group is reused)."""
        import torch.distributed as dist

        from thinwire.data.loaders import load_dataset
        from thinwire.models import build_model

        cwd = cfg_dict.pop("_driver_cwd", None)
        if cwd and os.path.isdir(cwd) and cwd not in sys.path:
            sys.path.insert(0, cwd)  # user model factories ("module:function") import as from the driver
        cfg = AllreduceConfig(**cfg_dict)
        self.cfg = cfg
        ds = load_dataset(cfg.dataset, cfg.data_path or None, seed=cfg.seed, standardize=cfg.standardize)
        self.x_train, self.y_train = ds.x_train.to(self.device), ds.y_train.to(self.device)
        test_idx = torch.arange(len(ds.y_test))[self.rank::self.world]
        self.x_test, self.y_test = ds.x_test[test_idx].to(self.device), ds.y_test[test_idx].to(self.device)
        self.model = build_model(cfg.model, ds.input_shape, ds.num_classes, hidden=cfg.hidden,
                                 seed=cfg.seed).to(self.device)
        x0 = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach()
        dist.broadcast(x0, src=0)  # identical start even if a user factory ignores the seed
        bufs = float_buffers(self.model)
        if bufs:
            flat = torch.cat([b.reshape(-1) for b in bufs])
            dist.broadcast(flat, src=0)
            self._set_buffers(flat)
        self.segments = param_segments(self.model)
        self.numel = int(x0.numel())
        self.state = init_state(cfg.kind, x0, cfg.coeff)
        self.reducer = Reducer(cfg.codec_spec, seed=cfg.seed)
        self.spe = steps_per_epoch(len(self.y_train), self.world, cfg.batch_size)
        if self.spe < 1:
            raise ConfigError("batch_size", f"{self.world} workers x batch {cfg.batch_size} exceeds the "
                              f"{len(self.y_train)} training samples", f"<= {len(self.y_train) // self.world}")
        self.total_steps = cfg.epochs * self.spe
        self.step = 0
        self.bytes_total = 0
        itemsize = x0.element_size()
        return {"numel": self.numel, "segments": list(self.segments), "steps_per_epoch": self.spe,
                "total_steps": self.total_steps, "dense_bytes": self.numel * itemsize,
                "collective": self.reducer.plan.collective, "codec": cfg.codec_spec,
                "buffer_bytes": sum(b.numel() * b.element_size() for b in bufs),
                "device": str(self.device), "backend": self.backend}

    def _set_buffers(self, flat: torch.Tensor) -> None:
        pos = 0
        for b in float_buffers(self.model):
            n = b.numel()
            b.copy_(flat[pos:pos + n].view_as(b))
            pos += n

    # training ----------------------------------------------------------------------------------------
    def train(self, n_steps: int) -> dict[str, Any]:
        """Run n synchronous steps; returns sums of losses and timings for the driver's metrics.

        allreduce_time is the whole `Reducer.mean` call: encode, collective(s), decode."""
        import torch.distributed as dist
        cfg = self.cfg
        assert cfg is not None
        st = self.state
        bufs = float_buffers(self.model)
        sums = {"loss": 0.0, "step_time": 0.0, "compute_time": 0.0, "allreduce_time": 0.0, "sleep_time": 0.0,
                "bytes": 0, "wire_bytes": 0.0, "buffer_bytes": 0, "steps": 0, "straggled": 0}
        self.model.train()
        for _ in range(n_steps):
            if self.step >= self.total_steps:
                break
            t = self.step
            t0 = time.perf_counter()
            lr = lr_at(t, base_lr=cfg.lr, total_steps=self.total_steps, steps_per_epoch=self.spe,
                       decay_at=cfg.decay_fractions, decay=cfg.lr_decay, warmup_epochs=cfg.warmup_epochs)
            idx = batch_indices(len(self.y_train), self.world, cfg.batch_size, cfg.seed, t, self.rank)
            idx = idx.to(self.device)
            y = grad_point(st)
            load_params(self.model, y)
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])
            loss.backward()
            grad = flat_grad(self.model).detach()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t1 = time.perf_counter()
            if straggler_at(t, workers=self.world, seed=cfg.seed, worker=cfg.straggler_worker,
                            random_pick=cfg.straggler_random) == self.rank and cfg.straggler_factor > 1.0:
                nap = (cfg.straggler_factor - 1.0) * (t1 - t0)
                time.sleep(nap)
                sums["sleep_time"] += nap
                sums["straggled"] += 1
            p = prepare(st, grad, y, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            t2 = time.perf_counter()
            # one call: compress, the codec's collective over all tensors in one buffer, decode
            red = self.reducer.mean(p, step=t, segments=self.segments, need_local=needs_local(st))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t3 = time.perf_counter()
            finish(st, p, red, lr=lr, momentum=cfg.momentum)
            if bufs:  # BatchNorm statistics: full-precision average every step
                flat = torch.cat([b.reshape(-1) for b in bufs])
                dist.all_reduce(flat)
                self._set_buffers(flat.div_(self.world))
                sums["buffer_bytes"] += flat.numel() * flat.element_size()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t4 = time.perf_counter()
            nbytes = red.payload_bytes
            sums["wire_bytes"] += red.wire_bytes
            sums["loss"] += float(loss.detach())
            sums["step_time"] += t4 - t0
            sums["compute_time"] += t1 - t0
            sums["allreduce_time"] += t3 - t2
            sums["bytes"] += nbytes
            sums["steps"] += 1
            self.bytes_total += nbytes
            self.step += 1
        sums.update(step=self.step, rank=self.rank, lr=lr_at(max(self.step - 1, 0), base_lr=cfg.lr,
                    total_steps=self.total_steps, steps_per_epoch=self.spe, decay_at=cfg.decay_fractions,
                    decay=cfg.lr_decay, warmup_epochs=cfg.warmup_epochs))
        return sums

    # evaluation ----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Test accuracy/loss of the output model over all ranks' test shards (collective)."""
        import torch.distributed as dist
        st = self.state
        mean_error = None
        eval_bytes = 0
        if st.memory is not None and st.memory.needs_error_average:
            mean_error = st.error.clone()  # extra full-precision all-reduce, only at evaluation
            dist.all_reduce(mean_error)
            mean_error.div_(self.world)
            eval_bytes = mean_error.numel() * mean_error.element_size()
        load_params(self.model, output_point(st, mean_error))
        self.model.eval()
        correct, loss_sum = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, len(self.y_test), 2048):
                out = self.model(self.x_test[i:i + 2048])
                yb = self.y_test[i:i + 2048]
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += float((out.argmax(1) == yb).sum())
        tot = torch.tensor([correct, loss_sum, float(len(self.y_test))], dtype=torch.float64, device=self.device)
        dist.all_reduce(tot)
        c, ls, n = tot.tolist()
        return {"accuracy": c / max(n, 1.0), "loss": ls / max(n, 1.0), "eval_allreduce_bytes": eval_bytes}

    # checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything this rank needs to continue bit for bit (on CPU): x, momentum, the error-feedback
        memory (DEF/DEF-A residual), BatchNorm buffers, the step and byte counters, torch's RNG."""
        st = self.state
        bufs = float_buffers(self.model)
        return {"rank": self.rank, "step": self.step, "bytes_total": self.bytes_total,
                "x": st.x.detach().cpu().clone(), "m": st.m.detach().cpu().clone(),
                "memory": None if st.memory is None else st.memory.state_dict(),
                "buffers": torch.cat([b.reshape(-1) for b in bufs]).cpu() if bufs else None,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, d: dict[str, Any]) -> int:
        """Continue from `state_dict()` output (after `configure` with the same settings)."""
        st = self.state
        if int(d["rank"]) != self.rank or d["x"].numel() != st.x.numel():
            raise ConfigError("resume", f"checkpoint state of rank {d['rank']} ({d['x'].numel()} parameters) does "
                              f"not fit rank {self.rank} ({st.x.numel()} parameters)", "the same run's checkpoint")
        st.x.copy_(d["x"].to(self.device))
        st.m.copy_(d["m"].to(self.device))
        if st.memory is not None:
            st.memory.load_state_dict(d["memory"])
            if st.memory.residual is not None:
                st.memory.residual = st.memory.residual.to(self.device)
        if d.get("buffers") is not None:
            self._set_buffers(d["buffers"].to(self.device))
        self.step, self.bytes_total = int(d["step"]), int(d["bytes_total"])
        torch.set_rng_state(d["rng"])
        return self.step

    def snapshot(self) -> dict[str, torch.Tensor]:
        """x, e, m on CPU (tests check the iterate-averaging identity on the real group)."""
        st = self.state
        return {"x": st.x.cpu().clone(), "e": st.error.cpu().clone(), "m": st.m.cpu().clone(), "step": self.step}

    def time_allreduce(self, numel: int, iters: int) -> dict[str, float]:
        """Mean seconds of one all_reduce of `numel` floats (barrier first, so ranks start together)."""
        import torch.distributed as dist
        buf = torch.ones(numel, device=self.device)
        for _ in range(3):
            dist.all_reduce(buf)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return {"seconds": (time.perf_counter() - t0) / iters, "bytes": numel * buf.element_size()}
