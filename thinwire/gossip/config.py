"""`thinwire decentralized` settings, and what they imply: the data set, each peer's shard, the
model and the number of steps per epoch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from thinwire.collective.group import BACKENDS, PEER_TIMEOUT_S, check_peer_timeout
from thinwire.config import MODELS_HELP, _f, check_choice, check_codec, check_float, check_int, check_model
from thinwire.errors import ConfigError
from thinwire.gossip.step import ALGORITHMS, AlgoConfig
from thinwire.gossip.topology import MIXING_RULES, TOPOLOGIES, graph

DEC_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "npz", "mnist1d")
DEC_PARTITIONS = ("label-pairs", "dirichlet", "iid")
ENGINES = ("ray", "local")
PROFILES = ("uniform", "lognormal", "mobile", "datacenter")
STRAGGLERS = ("none", "iid", "gilbert")
NONZERO = 1e-6  # the authors' threshold for a non-zero weight


@dataclass
class DecentralizedConfig:
    # run
    name: str = _f("", "run name; outputs go to OUT_DIR/NAME, which must be new unless --force "
                   "(empty = a new OUT_DIR/decentralized-DATE-TIME)")
    out_dir: str = _f("runs", "directory holding run directories")
    seed: int = _f(0, "seed for data split, init, minibatches, codecs and faults")
    # algorithm
    algorithm: str = _f("cdproxsgt", "cdproxsgt (compressed tracking), dproxsgt (exact tracking), choco "
                        "(compressed gossip, no tracking) or allreduce (exact averaging)", choices=ALGORITHMS)
    codec: str = _f("topk:fraction=0.3", "compressor of cdproxsgt/choco messages: any thinwire codec, e.g. "
                    "topk:fraction=0.3, randk:fraction=0.3, qsgd:levels=16, eden:bits=4")
    gamma_x: float = _f(0.5, "consensus step on x (cdproxsgt, choco)")
    gamma_y: float = _f(0.5, "consensus step on the gradient tracker y (cdproxsgt)")
    l1: float = _f(0.0, "L1 regularizer mu (prox = soft threshold at lr*mu); 0 = none")
    clip: float = _f(10.0, "clip each stochastic gradient to this norm (the authors clip at 10); 0 = off")
    lr: float = _f(0.05, "constant step size eta")
    epochs: int = _f(30, "epochs (one epoch = one pass over an average peer's shard)")
    batch_size: int = _f(8, "per-peer minibatch size")
    # graph
    workers: int = _f(5, "number of peers")
    topology: str = _f("ring", f"graph: {TOPOLOGIES}")
    mixing: str = _f("auto", "mixing weights: metropolis, uniform-ring (1/3, the paper's ring) or auto "
                     "(uniform-ring on a ring of >= 3 peers, metropolis otherwise)", choices=("auto",) + MIXING_RULES)
    # data and model
    dataset: str = _f("digits", "data set", choices=DEC_DATASETS)
    data_path: str = _f("", "directory or file for mnist/fashion-mnist/cifar10/npz")
    standardize: bool = _f(False, "standardise inputs per channel with training-set statistics")
    partition: str = _f("label-pairs", "label-pairs (peer i gets classes {i, 9-i}), dirichlet or iid",
                        choices=DEC_PARTITIONS)
    alpha: float = _f(0.5, "Dirichlet concentration for --partition dirichlet")
    model: str = _f("mlp", f"model: {MODELS_HELP}")
    hidden: list = _f([64, 64], "MLP hidden sizes, e.g. 64,64")
    # faults (simulated time)
    profile: str = _f("uniform", "per-peer speed/bandwidth profile", choices=PROFILES)
    compute_per_sample: float = _f(0.002, "seconds of compute per sample for a speed-1 peer")
    bandwidth_mbps: float = _f(100.0, "median per-edge bandwidth in Mbit/s")
    latency_ms: float = _f(1.0, "median one-way latency in ms")
    stragglers: str = _f("none", "straggler model", choices=STRAGGLERS)
    straggler_prob: float = _f(0.0, "probability a peer straggles in a step (iid) / bad-state share (gilbert)")
    straggler_slowdown: float = _f(5.0, "compute slowdown factor of a straggler")
    straggler_burst: float = _f(5.0, "mean burst length in steps for --stragglers gilbert")
    # engine
    engine: str = _f("ray", "ray (one actor per peer, torch.distributed point-to-point) or local "
                     "(single-process reference, one thread per peer)", choices=ENGINES)
    backend: str = _f("auto", "torch.distributed backend for --engine ray", choices=BACKENDS)
    ray_address: str = _f("", "attach to an existing Ray cluster (auto or HOST:PORT); empty = local")
    threads: int = _f(1, "torch threads per peer")
    peer_timeout: float = _f(PEER_TIMEOUT_S, "seconds a peer may stay silent once another has finished, and the "
                             "process-group timeout (--engine ray): a lost peer ends the run within about this long")
    progress: bool = _f(True, "show a progress bar")
    plots: bool = _f(True, "write PNG plots into the run directory")

    def validate(self) -> "DecentralizedConfig":
        from thinwire.rundir import check_run_name
        check_run_name(self.name)
        check_int("seed", self.seed, 0)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        check_codec("codec", self.codec)
        check_float("gamma_x", self.gamma_x, 0.0, 1.0, lo_open=True)
        check_float("gamma_y", self.gamma_y, 0.0, 1.0, lo_open=True)
        check_float("l1", self.l1, 0.0)
        check_float("clip", self.clip, 0.0)
        check_float("lr", self.lr, 0.0, lo_open=True)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("workers", self.workers, 2)
        check_choice("mixing", self.mixing, ("auto",) + MIXING_RULES)
        check_choice("dataset", self.dataset, DEC_DATASETS)
        if self.dataset not in ("digits", "mnist1d") and not self.data_path:  # generated / bundled
            raise ConfigError("data_path", f"data set {self.dataset} needs --data-path", "a directory or file")
        if self.data_path and not Path(self.data_path).exists():
            raise ConfigError("data_path", f"{self.data_path!r} does not exist", "an existing directory or file")
        check_choice("partition", self.partition, DEC_PARTITIONS)
        check_float("alpha", self.alpha, 0.0, lo_open=True)
        check_model("model", self.model)
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError("hidden", f"bad hidden sizes {self.hidden!r}", "a list of positive integers, e.g. 64,64")
        check_choice("profile", self.profile, PROFILES)
        check_float("compute_per_sample", self.compute_per_sample, 0.0)
        check_float("bandwidth_mbps", self.bandwidth_mbps, 0.0, lo_open=True)
        check_float("latency_ms", self.latency_ms, 0.0)
        check_choice("stragglers", self.stragglers, STRAGGLERS)
        check_float("straggler_prob", self.straggler_prob, 0.0, 1.0)
        check_float("straggler_slowdown", self.straggler_slowdown, 1.0)
        check_float("straggler_burst", self.straggler_burst, 1.0)
        check_choice("engine", self.engine, ENGINES)
        check_choice("backend", self.backend, BACKENDS)
        check_int("threads", self.threads, 1)
        check_peer_timeout(self.peer_timeout)
        graph(self.topology, self.workers, self.seed)  # one-line error on a bad --topology
        self.mixing_rule  # noqa: B018 - checks uniform-ring fits the graph
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / (self.name or "decentralized")  # entry points resolve it: thinwire.rundir

    @property
    def mixing_rule(self) -> str:
        if self.mixing == "auto":
            return "uniform-ring" if self.topology == "ring" and self.workers >= 3 else "metropolis"
        if self.mixing == "uniform-ring" and (self.topology != "ring" or self.workers < 3):
            raise ConfigError("mixing", "uniform-ring needs --topology ring with at least 3 peers",
                              "metropolis, auto")
        return self.mixing

    def algo(self) -> AlgoConfig:
        return AlgoConfig(algorithm=self.algorithm, lr=self.lr, l1=self.l1, gamma_x=self.gamma_x,
                          gamma_y=self.gamma_y, codec=self.codec, clip=self.clip, seed=self.seed).validate()

    def network(self):
        from thinwire.faults.network import NetworkModel
        return NetworkModel(seed=self.seed, profile=self.profile, bandwidth_mbps=self.bandwidth_mbps,
                            latency_ms=self.latency_ms, compute_per_sample=self.compute_per_sample,
                            stragglers=self.stragglers, straggler_prob=self.straggler_prob,
                            straggler_slowdown=self.straggler_slowdown, straggler_burst=self.straggler_burst)


# -- data, model and graph of a run (identical wherever they are built) ----------------------------
def load_data(cfg: DecentralizedConfig):
    from thinwire.data.loaders import load_dataset
    return load_dataset(cfg.dataset, cfg.data_path or None, seed=cfg.seed, standardize=cfg.standardize)


def shards(cfg: DecentralizedConfig, ds) -> list[np.ndarray]:
    from thinwire.data.partition import dirichlet_partition, iid_partition, label_pairs_partition
    y = ds.y_train.numpy()
    if cfg.partition == "label-pairs":
        return label_pairs_partition(y, cfg.workers, num_classes=ds.num_classes, seed=cfg.seed)
    if cfg.partition == "dirichlet":
        return dirichlet_partition(y, cfg.workers, alpha=cfg.alpha, seed=cfg.seed)
    return iid_partition(y, cfg.workers, seed=cfg.seed)


def make_model(cfg: DecentralizedConfig, ds) -> torch.nn.Module:
    from thinwire.models import build_model
    return build_model(cfg.model, ds.input_shape, ds.num_classes, hidden=cfg.hidden, seed=cfg.seed)


def steps_per_epoch(cfg: DecentralizedConfig, num_train: int) -> int:
    """One pass over an average peer's shard; all peers step in lockstep."""
    return max(1, num_train // (cfg.workers * cfg.batch_size))
