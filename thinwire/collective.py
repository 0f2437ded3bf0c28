"""Data-parallel training with compressed all-reduce: dense SGD, EF, DEF and DEF-A (spec def.md).

K workers are Ray actors that form one `torch.distributed` process group (NCCL when every worker
has a GPU, gloo otherwise). Every step each worker

1. reads its model at the gradient point y (x for sgd/ef, x - c*e for def/defa),
2. takes a minibatch gradient and adds weight decay at y,
3. sgd: averages the gradient through the codec (identity by default: one dense all-reduce), then
   applies momentum SGD; none/ef/def/defa: updates its local momentum m, forms p = e + lr*m,
   averages C(p) over the group with the collective that fits the codec (`thinwire.reducer`:
   random blocks -> one all-reduce of the shared blocks, EDEN -> all-gather and one inverse
   rotation, others -> all-gather), keeps e' = p - C(p) and moves x <- x - mean_k C(p_k),
4. averages floating BatchNorm buffers in full precision.

Evaluation reads the shared model x (sgd, ef, def) or, for DEF-A, the averaged virtual iterate
x - mean_k e_k, which costs one full-precision all-reduce of the residuals at evaluation only
(spec "DEF-A (found)" section D; the paper's own DEF-A rule is not confirmed).

The per-step math is in `WorkerState`, `prepare` and `finish` (tensors only, no processes) around
one `Reducer` call, so the same code runs inside the actors and in the K-worker simulation
`simulate_step` used by tests. The DDP hook (`thinwire.ddp`) uses the same `Reducer`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from thinwire.compression.base import Context
from thinwire.compression.feedback import Memory, make_memory
from thinwire.compression.randblock import Block, block_slices

from .config import _f, check_choice, check_float, check_int, check_model, write_resolved_config
from .errors import ConfigError
from .peers import BACKENDS, Peer, PeerGroup, free_port, resolve_backend  # noqa: F401  (re-exported)
from .reducer import Reduced, Reducer, parse_codec, simulate_mean

log = logging.getLogger(__name__)

METHODS = ("sgd", "none", "ef", "def", "defa")
FEEDBACKS = ("", "none", "ef", "def", "defa")
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
    method: str = _f("def", "sgd (averaged gradient, momentum after), or none, ef, def, defa (local momentum, "
                     "compressed step with that error feedback)", choices=METHODS)
    codec: str = _f("", "codec of the averaged message, e.g. eden:bits=2, topk:fraction=0.01 (empty = identity "
                    "for sgd, randblock:ratio=RATIO otherwise)")
    feedback: str = _f("", "error feedback none, ef, def or defa; overrides --method when given", choices=FEEDBACKS)
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
        check_choice("feedback", self.feedback, FEEDBACKS)
        check_float("ratio", self.ratio, 1.0)
        parse_codec(self.codec_spec)
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

    @property
    def kind(self) -> str:
        """The method actually run: --feedback when given, else --method."""
        return self.feedback or self.method

    @property
    def codec_spec(self) -> str:
        if self.codec:
            return self.codec
        return "identity" if self.kind == "sgd" else f"randblock:ratio={self.ratio!r}"


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

    x is the shared model (identical on every worker), m the momentum (local for none/ef/def/defa,
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
    """Where the gradient is taken: x (sgd, none, ef) or y = x - c*e (def, defa)."""
    return state.x if state.memory is None else state.memory.eval_point(state.x)


def prepare(state: WorkerState, grad: torch.Tensor, y: torch.Tensor, *, lr: float, momentum: float,
            weight_decay: float) -> torch.Tensor:
    """Local half of a step; returns the message p whose compressed mean the group forms.

    sgd: the gradient g + wd*y. none/ef/def/defa: m <- mu*m + g, p = e + lr*m.
    """
    g = grad + weight_decay * y if weight_decay else grad.clone()
    if state.memory is None:
        return g
    state.m.mul_(momentum).add_(g)
    return state.memory.message(state.m, lr)


def finish(state: WorkerState, p: torch.Tensor, reduced: Reduced, *, lr: float, momentum: float) -> None:
    """Shared half of a step, given this rank's `Reducer.mean` of p: keep e' = p - C(p), move x."""
    if state.memory is None:
        state.m.mul_(momentum).add_(reduced.mean)
        state.x.sub_(lr * state.m)
    else:
        if state.memory.keeps_residual:
            assert reduced.local is not None
            state.memory.update(p, reduced.local)
        else:
            state.memory.steps += 1
        state.x.sub_(reduced.mean)


def needs_local(state: WorkerState) -> bool:
    return state.memory is not None and state.memory.keeps_residual


def output_point(state: WorkerState, mean_error: torch.Tensor | None = None) -> torch.Tensor:
    """Model to evaluate: x, or x - mean_k e_k for DEF-A (needs the all-reduced mean residual)."""
    if state.memory is None:
        return state.x
    return state.memory.output_point(state.x, mean_error)


def simulate_step(states: Sequence[WorkerState], grad_fn: Callable[[int, torch.Tensor], torch.Tensor], *,
                  lr: float, momentum: float, weight_decay: float, reducer: Reducer, step: int,
                  segments: Sequence[int] | None = None) -> list[Reduced]:
    """One synchronous step of K workers in one process: what the process group computes."""
    ps = []
    for k, st in enumerate(states):
        y = grad_point(st)
        ps.append(prepare(st, grad_fn(k, y), y, lr=lr, momentum=momentum, weight_decay=weight_decay))
    reduced = simulate_mean(reducer, ps, step=step, segments=segments, need_local=needs_local(states[0]))
    for st, p, r in zip(states, ps, reduced):
        finish(st, p, r, lr=lr, momentum=momentum)
    return reduced


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
class WorkerGroup(PeerGroup):
    """K `CollectiveWorker` actors joined in one process group; runs any number of configs of that size in turn."""

    def __init__(self, workers: int, backend: str = "auto", *, ray_address: str = "", threads: int = 1,
                 port: int = 0) -> None:
        super().__init__(CollectiveWorker, workers, backend, ray_address=ray_address, threads=threads, port=port)

    def __enter__(self) -> "WorkerGroup":
        return self

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
        write_resolved_config(run_dir, cfg)
        method = cfg.kind
        eval_point = "x - mean_k e_k" if method == "defa" else "x"
        history: list[dict[str, Any]] = []
        cum = {"bytes": 0, "wire_bytes": 0.0, "steps": 0, "step_time": 0.0, "allreduce_time": 0.0,
               "compute_time": 0.0}
        t_start = time.perf_counter()
        with open(run_dir / "metrics.jsonl", "w") as fh, \
                tqdm(total=total, desc=f"{cfg.name} {method}", unit="step", disable=not cfg.progress,
                     leave=False) as bar:
            def record(stats: list[dict[str, Any]] | None) -> None:
                ev = self.call("evaluate")[0]
                step = cum["steps"]
                row: dict[str, Any] = {"step": step, "epoch": step / spe, "method": method,
                                       "codec": info["codec"], "accuracy": ev["accuracy"], "loss": ev["loss"],
                                       "bytes": cum["bytes"], "wire_bytes": cum["wire_bytes"],
                                       "bytes_per_step": _per_step(cum["bytes"], step),
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
                cum["wire_bytes"] += r0["wire_bytes"]
                for k in ("step_time", "allreduce_time", "compute_time"):
                    cum[k] += r0[k]
                bar.update(r0["steps"])
                if cum["steps"] % every == 0 or cum["steps"] >= total:
                    merged = _merge_stats(chunk_stats)
                    chunk_stats = []
                    record(merged)
        steps = max(1, cum["steps"])
        final = history[-1]
        per_step = _per_step(cum["bytes"], cum["steps"])
        summary = {"name": cfg.name, "method": method, "codec": info["codec"], "collective": info["collective"],
                   "workers": cfg.workers, "backend": info["backend"],
                   "ratio": cfg.ratio if info["codec"].startswith("randblock") else 1.0, "coeff": cfg.coeff,
                   "seed": cfg.seed,
                   "dataset": cfg.dataset, "model": cfg.model, "params": info["numel"], "steps": cum["steps"],
                   "epochs": cfg.epochs, "final_accuracy": final["accuracy"], "final_loss": final["loss"],
                   "best_accuracy": max(r["accuracy"] for r in history),
                   "bytes_per_step": per_step, "dense_bytes_per_step": info["dense_bytes"],
                   "wire_bytes_per_step": cum["wire_bytes"] / steps,
                   "buffer_bytes_per_step": info["buffer_bytes"], "total_bytes": cum["bytes"],
                   "bytes_fraction": (per_step or 0) / info["dense_bytes"],
                   "step_time": cum["step_time"] / steps, "allreduce_time": cum["allreduce_time"] / steps,
                   "compute_time": cum["compute_time"] / steps, "wall_time": time.perf_counter() - t_start,
                   "eval_point": eval_point, "run_dir": str(run_dir), "history": history}
        (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "history"},
                                                         indent=2) + "\n")
        if cfg.plots:
            plot_runs({method: [history]}, run_dir, title=f"{cfg.name}: {method} {info['codec']}, "
                                                          f"{cfg.workers} workers")
        return summary


def _per_step(total: int, steps: int) -> int | float | None:
    """Bytes per step: exact integer when every step sent the same, else the mean; None before any step."""
    if steps <= 0:
        return None
    return total // steps if total % steps == 0 else total / steps


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
           "grad_point", "prepare", "finish", "needs_local", "output_point", "simulate_step", "lr_at",
           "batch_indices", "steps_per_epoch", "straggler_at", "step_blocks", "resolve_backend", "plot_runs",
           "METHODS", "BACKENDS"]
