"""`thinwire allreduce` settings: one validated dataclass (flags and TOML/YAML keys derive from it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thinwire.collective.group import BACKENDS, PEER_TIMEOUT_S, check_peer_timeout
from thinwire.collective.reducer import parse_codec
from thinwire.config import MODELS_HELP, _f, check_choice, check_float, check_int, check_model
from thinwire.errors import ConfigError

METHODS = ("sgd", "none", "ef", "def", "defa")
FEEDBACKS = ("", "none", "ef", "def", "defa")
ALLREDUCE_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "npz", "mnist1d")


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
    model: str = _f("lenet", f"model: {MODELS_HELP}")
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
    peer_timeout: float = _f(PEER_TIMEOUT_S, "seconds a rank may stay silent once another rank has finished, and "
                             "the process-group timeout: a lost worker ends the run within about this long")
    progress: bool = _f(True, "show a progress bar")
    plots: bool = _f(True, "write PNG plots into the run directory")

    def validate(self) -> "AllreduceConfig":
        from thinwire.rundir import check_run_name
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
        if self.dataset not in ("digits", "mnist1d") and not self.data_path:  # generated / bundled
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
        check_peer_timeout(self.peer_timeout)
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
