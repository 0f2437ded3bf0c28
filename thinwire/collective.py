"""Data-parallel training with compressed all-reduce: dense SGD, EF, DEF and DEF-A (spec def.md).

K workers are Ray actors that form one `torch.distributed` process group (NCCL when every worker
has a GPU, gloo otherwise). Every step each worker

1. reads its model at the gradient point y (x for sgd/ef, x - c*e for def/defa),
2. takes a minibatch gradient and adds weight decay at y,
3. sgd: all-reduces the dense gradient (one flat buffer), then applies momentum SGD;
   ef/def/defa: updates its local momentum m, forms p = e + lr*m, packs the shared random blocks
   of all tensors into one buffer, all-reduces it (one call), keeps e' = p - C(p) and moves the
   shared model x <- x - mean_k C(p_k),
4. averages floating BatchNorm buffers in full precision.

Evaluation reads the shared model x (sgd, ef, def) or, for DEF-A, the averaged virtual iterate
x - mean_k e_k, which costs one full-precision all-reduce of the residuals at evaluation only
(spec "DEF-A (found)" section D; the paper's own DEF-A rule is not confirmed).

The per-step math is in `WorkerState`, `prepare` and `finish` (tensors only, no processes), so the
same code runs inside the actors and in the K-worker simulation `simulate_step` used by tests.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from thinwire.compression.base import Context
from thinwire.compression.feedback import Memory, make_memory
from thinwire.compression.randblock import Block, block_slices, gather, kept_count, scatter

from .config import _f, check_choice, check_float, check_int, check_model
from .errors import ConfigError, UserError

log = logging.getLogger(__name__)

METHODS = ("sgd", "ef", "def", "defa")
BACKENDS = ("auto", "gloo", "nccl")
ALLREDUCE_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "npz")


# -- configuration ------------------------------------------------------------------------------
@dataclass
class AllreduceConfig:
    # run
    name: str = _f("", "run name; outputs go to OUT_DIR/NAME, which must be new unless --force "
                   "(empty = a new OUT_DIR/allreduce-DATE-TIME); OUT_DIR/latest links to the newest run")
    out_dir: str = _f("runs", "directory holding run directories")
    seed: int = _f(0, "seed for data split, init, shuffling, random blocks and stragglers")
    # collective
    workers: int = _f(4, "number of data-parallel workers (Ray actors, one process-group rank each)")
    backend: str = _f("auto", "torch.distributed backend: auto = nccl if every worker has a GPU, else gloo",
                      choices=BACKENDS)
    method: str = _f("def", "sgd (dense all-reduce), ef, def or defa (random-block all-reduce)", choices=METHODS)
    ratio: float = _f(64.0, "random-block compression ratio: each tensor sends max(1, numel // ratio) values")
    coeff: float = _f(0.3, "DEF detach coefficient c: gradients at x - c*e (0 = EF)")
    # data and model
    dataset: str = _f("digits", "data set", choices=ALLREDUCE_DATASETS)
    data_path: str = _f("", "directory or file for mnist/fashion-mnist/cifar10/npz")
    standardize: bool = _f(False, "standardise inputs per channel with training-set statistics")
    model: str = _f("lenet", "model: mlp, lenet, logreg or module:function")
    hidden: list = _f([64, 64], "MLP hidden sizes, e.g. 64,64")
    # optimisation
    batch_size: int = _f(16, "per-worker batch size (global batch = workers * batch size)")
    epochs: int = _f(40, "training epochs over the training set")
    lr: float = _f(0.05, "base learning rate")
    momentum: float = _f(0.9, "momentum (local per worker for ef/def/defa, on the mean gradient for sgd)")
    weight_decay: float = _f(5e-4, "weight decay, added to the gradient at the evaluation point")
    lr_decay_at: str = _f("0.5,0.75", "fractions of training at which the lr is multiplied by --lr-decay")
    lr_decay: float = _f(0.1, "step decay factor")
    warmup_epochs: float = _f(0.0, "linear lr warm-up length in epochs")
    eval_every: int = _f(0, "evaluate every N steps (0 = once per epoch)")
    # stragglers
    straggler_worker: int = _f(-1, "rank that straggles every step (-1 = none)")
    straggler_factor: float = _f(1.0, "a straggler sleeps (factor - 1) x its compute time each step")
    straggler_random: bool = _f(False, "pick a seeded random straggler rank every step")
    # engine
    threads: int = _f(1, "torch threads per worker")
    port: int = _f(0, "rendezvous TCP port (0 = a free port)")
    ray_address: str = _f("", "attach to an existing Ray cluster (auto or HOST:PORT); empty = local")
    progress: bool = _f(True, "show a progress bar")
    plots: bool = _f(True, "write PNG plots into the run directory")

    def validate(self) -> "AllreduceConfig":
        from .rundir import check_run_name
        check_run_name(self.name)
        check_int("seed", self.seed, 0)
        check_int("workers", self.workers, 1)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("method", self.method, METHODS)
        check_float("ratio", self.ratio, 1.0)
        check_float("coeff", self.coeff, 0.0, 1.0)
        check_choice("dataset", self.dataset, ALLREDUCE_DATASETS)
        if self.dataset != "digits" and not self.data_path:
            raise ConfigError("data_path", f"data set {self.dataset} needs --data-path", "a directory or file")
        if self.data_path and not Path(self.data_path).exists():
            raise ConfigError("data_path", f"{self.data_path!r} does not exist", "an existing directory or file")
        check_model("model", self.model)
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError("hidden", f"bad hidden sizes {self.hidden!r}", "a list of positive integers, e.g. 64,64")
        check_int("batch_size", self.batch_size, 1)
        check_int("epochs", self.epochs, 1)
        check_float("lr", self.lr, 0.0, lo_open=True)
        check_float("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        self.decay_fractions  # parses and checks lr_decay_at
        check_float("lr_decay", self.lr_decay, 0.0, 1.0, lo_open=True)
        check_float("warmup_epochs", self.warmup_epochs, 0.0)
        check_int("eval_every", self.eval_every, 0)
        check_int("straggler_worker", self.straggler_worker, -1, self.workers - 1)
        check_float("straggler_factor", self.straggler_factor, 1.0)
        if self.straggler_random and self.straggler_worker >= 0:
            raise ConfigError("straggler_random", "cannot be combined with --straggler-worker",
                              "either a fixed --straggler-worker or --straggler-random")
        check_int("threads", self.threads, 1)
        check_int("port", self.port, 0, 65535)
        return self

    @property
    def decay_fractions(self) -> tuple[float, ...]:
        text = str(self.lr_decay_at).strip()
        if not text:
            return ()
        try:
            fr = tuple(sorted(float(s) for s in text.split(",") if s.strip()))
        except ValueError:
            raise ConfigError("lr_decay_at", f"bad list {text!r}", "comma-separated fractions in (0, 1), e.g. 0.5,0.75") \
                from None
        if any(not (0.0 < f < 1.0) for f in fr):
            raise ConfigError("lr_decay_at", f"fractions {text!r} out of range", "comma-separated fractions in (0, 1)")
        return fr

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / (self.name or "allreduce")  # the command resolves it: thinwire.rundir


# -- pure schedule helpers ---------------------------------------------------------------------
def lr_at(step: int, *, base_lr: float, total_steps: int, steps_per_epoch: int,
          decay_at: Sequence[float] = (), decay: float = 0.1, warmup_epochs: float = 0.0) -> float:
    """Learning rate of (0-based) step: linear warm-up, then x decay at each fraction of training."""
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return base_lr * (step + 1) / warm
    drops = sum(1 for f in decay_at if step >= round(f * total_steps))
    return base_lr * decay ** drops


def steps_per_epoch(num_train: int, workers: int, batch_size: int) -> int:
    """Full global batches per epoch (the ragged tail is dropped, as DistributedSampler+drop_last)."""
    return num_train // (workers * batch_size)


def batch_indices(num_train: int, workers: int, batch_size: int, seed: int, step: int, rank: int) -> torch.Tensor:
    """Training-set indices of `rank`'s minibatch at `step`: a seeded per-epoch shuffle cut rank::K.

    The union over ranks is the global batch, which is what dense SGD must equal.
    """
    spe = steps_per_epoch(num_train, workers, batch_size)
    epoch, i = divmod(step, spe)
    perm = torch.randperm(num_train, generator=Context(seed=seed, round=epoch, shared=True).generator("shuffle"))
    mine = perm[rank::workers]
    return mine[i * batch_size:(i + 1) * batch_size]


def straggler_at(step: int, *, workers: int, seed: int, worker: int = -1, random_pick: bool = False) -> int:
    """Rank that straggles at `step` (-1 = none); a seeded draw all ranks agree on when random."""
    if random_pick:
        g = Context(seed=seed, round=step, shared=True).generator("straggler")
        return int(torch.randint(workers, (1,), generator=g).item())
    return worker


def step_blocks(segments: Sequence[int], ratio: float, seed: int, step: int) -> list[Block]:
    """The random blocks of every tensor at `step`; identical on all workers (shared seed)."""
    return block_slices(segments, ratio, Context(seed=seed, round=step, shared=True))


# -- per-worker state and the step math (no processes) -----------------------------------------
@dataclass
class WorkerState:
    """One worker's optimiser state over the flat parameter vector.

    x is the shared model (identical on every worker), m the momentum (local for ef/def/defa,
    the momentum of the mean gradient for sgd), `memory` the error-feedback residual e.
    """

    method: str
    x: torch.Tensor
    m: torch.Tensor
    memory: Memory | None

    @property
    def error(self) -> torch.Tensor:
        if self.memory is None or self.memory.residual is None:
            return torch.zeros_like(self.x)
        return self.memory.residual


def init_state(method: str, x0: torch.Tensor, coeff: float = 0.3) -> WorkerState:
    if method not in METHODS:
        raise ConfigError("method", f"unknown value {method!r}", ", ".join(METHODS))
    memory = None if method == "sgd" else make_memory(method, coeff=coeff if method in ("def", "defa") else 0.0)
    return WorkerState(method, x0.detach().clone(), torch.zeros_like(x0), memory)


def grad_point(state: WorkerState) -> torch.Tensor:
    """Where the gradient is taken: x (sgd, ef) or y = x - c*e (def, defa)."""
    return state.x if state.memory is None else state.memory.eval_point(state.x)


def prepare(state: WorkerState, grad: torch.Tensor, y: torch.Tensor, *, lr: float, momentum: float,
            weight_decay: float, blocks: Sequence[Block] | None) -> torch.Tensor:
    """Local half of a step; returns the buffer to all-reduce (sum).

    sgd: the dense gradient g + wd*y. ef/def/defa: m <- mu*m + g, p = e + lr*m, the block values
    of p packed into one buffer, and e' = p - C(p) stored.
    """
    g = grad + weight_decay * y if weight_decay else grad.clone()
    if state.memory is None:
        return g
    if blocks is None:
        raise ValueError("blocks: compressed methods need the step's random blocks")
    state.m.mul_(momentum).add_(g)
    p = state.memory.message(state.m, lr)
    payload = gather(p, blocks)
    state.memory.update_blocks(p, blocks)
    return payload


def finish(state: WorkerState, mean_payload: torch.Tensor, *, lr: float, momentum: float,
           blocks: Sequence[Block] | None) -> None:
    """Shared half of a step, given the all-reduced mean of the payloads: move x."""
    if state.memory is None:
        state.m.mul_(momentum).add_(mean_payload)
        state.x.sub_(lr * state.m)
    else:
        assert blocks is not None
        state.x.sub_(scatter(mean_payload, blocks, state.x.numel()))


def output_point(state: WorkerState, mean_error: torch.Tensor | None = None) -> torch.Tensor:
    """Model to evaluate: x, or x - mean_k e_k for DEF-A (needs the all-reduced mean residual)."""
    if state.memory is None:
        return state.x
    return state.memory.output_point(state.x, mean_error)


def payload_numel(method: str, numel: int, blocks: Sequence[Block] | None) -> int:
    return numel if method == "sgd" else kept_count(blocks or ())


def simulate_step(states: Sequence[WorkerState], grad_fn: Callable[[int, torch.Tensor], torch.Tensor], *,
                  lr: float, momentum: float, weight_decay: float, blocks: Sequence[Block] | None) -> None:
    """One synchronous step of K workers in one process: what the process group computes."""
    payloads = []
    for k, st in enumerate(states):
        y = grad_point(st)
        payloads.append(prepare(st, grad_fn(k, y), y, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                blocks=blocks))
    mean = torch.stack(payloads).sum(0) / len(states)
    for st in states:
        finish(st, mean, lr=lr, momentum=momentum, blocks=blocks)


# -- model <-> flat vector ------------------------------------------------------------------------
def param_segments(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(p.numel() for p in model.parameters())


def load_params(model: torch.nn.Module, vec: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(vec, model.parameters())


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


def float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


# -- backend selection ---------------------------------------------------------------------------
def resolve_backend(backend: str, gpus: float, workers: int) -> str:
    """auto -> nccl when the cluster has a GPU per worker, else gloo; nccl without GPUs is an error."""
    check_choice("backend", backend, BACKENDS)
    enough = gpus >= workers and torch.distributed.is_nccl_available()
    if backend == "auto":
        return "nccl" if enough else "gloo"
    if backend == "nccl" and not enough:
        why = f"{int(gpus)} GPU(s) visible for {workers} worker(s)" if gpus < workers else \
            "this torch build has no NCCL"
        raise ConfigError("backend", f"nccl needs one GPU per worker, but {why}", "gloo, auto")
    return backend


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _loopback_ifname() -> str | None:
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return None
    for n in ("lo", "lo0"):
        if n in names:
            return n
    return None


# -- the worker actor -------------------------------------------------------------------------------
class CollectiveWorker:
    """One process-group rank. Wrapped with `ray.remote` by `WorkerGroup`; thin around the step math."""

    def __init__(self, rank: int, world: int, backend: str, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.rank, self.world, self.backend = rank, world, backend
        self.device = torch.device("cpu")
        if backend == "nccl":
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so the local index is 0.
            local_rank = 0
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        self.cfg: AllreduceConfig | None = None

    # rendezvous -------------------------------------------------------------------------------
    def node_ip(self) -> str:
        import ray
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port("0.0.0.0")

    def init_group(self, init_method: str, local: bool, timeout_s: float = 120.0) -> int:
        import datetime
        import torch.distributed as dist
        if local and self.backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
            ifname = _loopback_ifname()
            if ifname:
                os.environ["GLOO_SOCKET_IFNAME"] = ifname
        dist.init_process_group(self.backend, init_method=init_method, rank=self.rank, world_size=self.world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        return self.rank

    def shutdown(self) -> None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()

    # run setup -------------------------------------------------------------------------------------
    def configure(self, cfg_dict: dict[str, Any]) -> dict[str, Any]:
        """Build data, model and optimiser state for one run (the process group is reused)."""
        import torch.distributed as dist
        from .data import load_dataset
        from .models import build_model

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
        self.state = init_state(cfg.method, x0, cfg.coeff)
        self.spe = steps_per_epoch(len(self.y_train), self.world, cfg.batch_size)
        if self.spe < 1:
            raise ConfigError("batch_size", f"{self.world} workers x batch {cfg.batch_size} exceeds the "
                              f"{len(self.y_train)} training samples", f"<= {len(self.y_train) // self.world}")
        self.total_steps = cfg.epochs * self.spe
        self.step = 0
        self.bytes_total = 0
        itemsize = x0.element_size()
        blocks = None if cfg.method == "sgd" else step_blocks(self.segments, cfg.ratio, cfg.seed, 0)
        return {"numel": self.numel, "segments": list(self.segments), "steps_per_epoch": self.spe,
                "total_steps": self.total_steps, "dense_bytes": self.numel * itemsize,
                "payload_bytes": payload_numel(cfg.method, self.numel, blocks) * itemsize,
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
        """Run n synchronous steps; returns sums of losses and timings for the driver's metrics."""
        import torch.distributed as dist
        cfg = self.cfg
        assert cfg is not None
        st = self.state
        bufs = float_buffers(self.model)
        sums = {"loss": 0.0, "step_time": 0.0, "compute_time": 0.0, "allreduce_time": 0.0, "sleep_time": 0.0,
                "bytes": 0, "buffer_bytes": 0, "steps": 0, "straggled": 0}
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
            blocks = None if st.method == "sgd" else step_blocks(self.segments, cfg.ratio, cfg.seed, t)
            payload = prepare(st, grad, y, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              blocks=blocks)
            t2 = time.perf_counter()
            dist.all_reduce(payload)  # one call: all tensors' blocks (or the dense gradient) in one buffer
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t3 = time.perf_counter()
            payload.div_(self.world)
            finish(st, payload, lr=lr, momentum=cfg.momentum, blocks=blocks)
            if bufs:  # BatchNorm statistics: full-precision average every step
                flat = torch.cat([b.reshape(-1) for b in bufs])
                dist.all_reduce(flat)
                self._set_buffers(flat.div_(self.world))
                sums["buffer_bytes"] += flat.numel() * flat.element_size()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t4 = time.perf_counter()
            nbytes = payload.numel() * payload.element_size()
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


# -- the driver -----------------------------------------------------------------------------------
def _local_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


class WorkerGroup:
    """K Ray actors joined in one process group; runs any number of configs of that size in turn."""

    def __init__(self, workers: int, backend: str = "auto", *, ray_address: str = "", threads: int = 1,
                 port: int = 0) -> None:
        import ray
        check_int("workers", workers, 1)
        check_choice("backend", backend, BACKENDS)
        if backend == "nccl" and not ray_address and not ray.is_initialized() and not torch.cuda.is_available():
            raise ConfigError("backend", "nccl needs one GPU per worker, but this machine has no CUDA GPU",
                              "gloo, auto")
        self._owns_ray = False
        if not ray.is_initialized():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                if ray_address:
                    ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING)
                else:
                    ray.init(num_cpus=_local_cpus(), include_dashboard=False, logging_level=logging.WARNING)
            self._owns_ray = True
        res = ray.cluster_resources()
        self.backend = resolve_backend(backend, float(res.get("GPU", 0.0)), workers)
        self.workers = workers
        cpus = float(res.get("CPU", 1.0))
        opts: dict[str, Any] = {"num_cpus": min(1.0, cpus / workers)}
        if self.backend == "nccl":
            opts["num_gpus"] = 1
        remote_cls = ray.remote(CollectiveWorker)
        self.actors = [remote_cls.options(**opts).remote(r, workers, self.backend, threads) for r in range(workers)]
        try:
            ip0 = ray.get(self.actors[0].node_ip.remote())
            local = ip0 == ray.util.get_node_ip_address()
            if local:  # single node: rendezvous on loopback, port found by the driver
                host, p = "127.0.0.1", port or free_port("127.0.0.1")
            else:  # multi-node: the rank-0 actor's node IP and a port free there
                host, p = ip0, port or ray.get(self.actors[0].free_port.remote())
            ray.get([a.init_group.remote(f"tcp://{host}:{p}", local) for a in self.actors])
        except Exception:
            self.close()
            raise

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        import ray
        for a in getattr(self, "actors", []):
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # an actor that already died has nothing to shut down
                pass
            ray.kill(a)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def call(self, method: str, *args: Any) -> list[Any]:
        """Call a worker method on every rank (collectives need all of them) and wait.

        A user error raised inside a worker (bad model factory, unreadable data) is re-raised as
        itself, so the CLI prints one line instead of a remote traceback.
        """
        import ray
        try:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors])
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise cause from None
            raise

    def time_allreduce(self, numel: int, iters: int = 100) -> dict[str, float]:
        res = self.call("time_allreduce", int(numel), int(iters))
        return {"seconds": max(r["seconds"] for r in res), "bytes": res[0]["bytes"]}

    def run(self, cfg: AllreduceConfig) -> dict[str, Any]:
        """Train one config on this group; writes metrics.jsonl, summary.json and plots to the run dir."""
        from tqdm import tqdm

        cfg.validate()
        if cfg.workers != self.workers:
            raise ConfigError("workers", f"{cfg.workers} differs from this group's {self.workers}",
                              str(self.workers))
        info = self.call("configure", {**dataclasses.asdict(cfg), "_driver_cwd": os.getcwd()})[0]
        total, spe = info["total_steps"], info["steps_per_epoch"]
        every = cfg.eval_every or spe
        run_dir = cfg.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        eval_point = "x - mean_k e_k" if cfg.method == "defa" else "x"
        history: list[dict[str, Any]] = []
        cum = {"bytes": 0, "steps": 0, "step_time": 0.0, "allreduce_time": 0.0, "compute_time": 0.0}
        t_start = time.perf_counter()
        with open(run_dir / "metrics.jsonl", "w") as fh, \
                tqdm(total=total, desc=f"{cfg.name} {cfg.method}", unit="step", disable=not cfg.progress,
                     leave=False) as bar:
            def record(stats: list[dict[str, Any]] | None) -> None:
                ev = self.call("evaluate")[0]
                step = cum["steps"]
                row: dict[str, Any] = {"step": step, "epoch": step / spe, "method": cfg.method,
                                       "accuracy": ev["accuracy"], "loss": ev["loss"], "bytes": cum["bytes"],
                                       "bytes_per_step": info["payload_bytes"],
                                       "dense_bytes_per_step": info["dense_bytes"], "eval_point": eval_point,
                                       "eval_allreduce_bytes": ev["eval_allreduce_bytes"],
                                       "elapsed": time.perf_counter() - t_start}
                if stats:
                    n = max(1, stats[0]["steps"])
                    r0 = stats[0]
                    row.update(lr=r0["lr"], train_loss=sum(s["loss"] for s in stats) / (n * len(stats)),
                               step_time=r0["step_time"] / n, allreduce_time=r0["allreduce_time"] / n,
                               compute_time=r0["compute_time"] / n,
                               straggler_sleep=sum(s["sleep_time"] for s in stats) / n)
                history.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                bar.set_postfix(acc=f"{ev['accuracy']:.3f}")

            record(None)
            chunk_stats: list[list[dict[str, Any]]] = []
            while cum["steps"] < total:
                n = min(every - cum["steps"] % every, total - cum["steps"], 50)
                stats = self.call("train", n)
                chunk_stats.append(stats)
                r0 = stats[0]
                cum["steps"] += r0["steps"]
                cum["bytes"] += r0["bytes"]
                for k in ("step_time", "allreduce_time", "compute_time"):
                    cum[k] += r0[k]
                bar.update(r0["steps"])
                if cum["steps"] % every == 0 or cum["steps"] >= total:
                    merged = _merge_stats(chunk_stats)
                    chunk_stats = []
                    record(merged)
        steps = max(1, cum["steps"])
        final = history[-1]
        summary = {"name": cfg.name, "method": cfg.method, "workers": cfg.workers, "backend": info["backend"],
                   "ratio": cfg.ratio if cfg.method != "sgd" else 1.0, "coeff": cfg.coeff, "seed": cfg.seed,
                   "dataset": cfg.dataset, "model": cfg.model, "params": info["numel"], "steps": cum["steps"],
                   "epochs": cfg.epochs, "final_accuracy": final["accuracy"], "final_loss": final["loss"],
                   "best_accuracy": max(r["accuracy"] for r in history),
                   "bytes_per_step": info["payload_bytes"], "dense_bytes_per_step": info["dense_bytes"],
                   "buffer_bytes_per_step": info["buffer_bytes"], "total_bytes": cum["bytes"],
                   "bytes_fraction": info["payload_bytes"] / info["dense_bytes"],
                   "step_time": cum["step_time"] / steps, "allreduce_time": cum["allreduce_time"] / steps,
                   "compute_time": cum["compute_time"] / steps, "wall_time": time.perf_counter() - t_start,
                   "eval_point": eval_point, "run_dir": str(run_dir), "history": history}
        (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "history"},
                                                         indent=2) + "\n")
        if cfg.plots:
            plot_runs({cfg.method: [history]}, run_dir, title=f"{cfg.name}: {cfg.method}, {cfg.workers} workers")
        return summary


def _merge_stats(chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum per-rank stats over several train() chunks."""
    out = []
    for rank_stats in zip(*chunks):
        m: dict[str, Any] = {}
        for s in rank_stats:
            for k, v in s.items():
                if k in ("step", "rank", "lr"):
                    m[k] = v
                else:
                    m[k] = m.get(k, 0) + v
        out.append(m)
    return out


# -- plots ------------------------------------------------------------------------------------------
def plot_runs(curves: dict[str, list[list[dict[str, Any]]]], out: Path, *, title: str = "",
              prefix: str = "") -> list[Path]:
    """Accuracy vs step and vs all-reduce bytes, one line per method (mean over the given runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for xkey, xlabel, fname in (("step", "step", "accuracy_vs_step.png"),
                                ("bytes", "all-reduce payload bytes per worker", "accuracy_vs_bytes.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, runs in curves.items():
            n = min(len(r) for r in runs)
            xs = [runs[0][i][xkey] for i in range(n)]
            ys = [sum(r[i]["accuracy"] for r in runs) / len(runs) for i in range(n)]
            ax.plot(xs, ys, label=f"{method}" + (f" (mean of {len(runs)})" if len(runs) > 1 else ""))
        if xkey == "bytes":
            ax.set_xscale("symlog", linthresh=1e4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / (prefix + fname)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def run_allreduce(cfg: AllreduceConfig) -> dict[str, Any]:
    """Python API: start K workers, train `cfg`, tear down; returns the summary metrics."""
    cfg.validate()
    with WorkerGroup(cfg.workers, cfg.backend, ray_address=cfg.ray_address, threads=cfg.threads,
                     port=cfg.port) as group:
        return group.run(cfg)


__all__ = ["AllreduceConfig", "WorkerState", "WorkerGroup", "CollectiveWorker", "run_allreduce", "init_state",
           "grad_point", "prepare", "finish", "output_point", "simulate_step", "lr_at", "batch_indices",
           "steps_per_epoch", "straggler_at", "step_blocks", "resolve_backend", "plot_runs", "METHODS",
           "BACKENDS"]
