"""`thinwire decentralized`: DProxSGT / CDProxSGT / ChocoSGD / all-reduce peers on a graph (spec cdproxsgt.md).

n peers, each with its own data shard, run the shared per-peer step of `thinwire.gossip` and talk
to their graph neighbours only. Two engines run the same step with a different communicator:

- "ray": one Ray actor per peer (`thinwire.peers.PeerGroup`), messages over torch.distributed
  point-to-point (`thinwire.p2p.DistNeighbourhood`; gloo on CPU, NCCL on GPU);
- "local": the single-process reference, one thread per peer with in-memory mailboxes.

The driver owns everything global and nothing the peers need: per epoch it pulls every x_i and
computes the authors' metrics (accuracy of x-bar and of the local models, consensus error,
training loss, objective with the L1 term, % non-zeros), advances the simulated clock of the fault
model (`thinwire.gossip_time`) from the message sizes the peers report, and writes metrics.jsonl,
summary.json and PNGs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import _f, check_choice, check_codec, check_float, check_int, check_model, write_resolved_config
from .errors import ConfigError
from .paths import make_dir
from .gossip import ALGORITHMS, AlgoConfig, PeerState, peer_step, run_reference
from .peers import BACKENDS, Peer, PeerGroup
from .reducer import parse_codec
from .topology import MIXING_RULES, TOPOLOGIES, graph, mixing, neighbours, spectral_gap

DEC_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "npz")
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
    model: str = _f("mlp", "model: mlp, lenet, logreg or module:function")
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
    progress: bool = _f(True, "show a progress bar")
    plots: bool = _f(True, "write PNG plots into the run directory")

    def validate(self) -> "DecentralizedConfig":
        from .rundir import check_run_name
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
        if self.dataset != "digits" and not self.data_path:
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
        from .faults import NetworkModel
        return NetworkModel(seed=self.seed, profile=self.profile, bandwidth_mbps=self.bandwidth_mbps,
                            latency_ms=self.latency_ms, compute_per_sample=self.compute_per_sample,
                            stragglers=self.stragglers, straggler_prob=self.straggler_prob,
                            straggler_slowdown=self.straggler_slowdown, straggler_burst=self.straggler_burst)


# -- data, model and graph of a run (identical wherever they are built) ----------------------------
def load_data(cfg: DecentralizedConfig):
    from .loaders import load_dataset
    return load_dataset(cfg.dataset, cfg.data_path or None, seed=cfg.seed, standardize=cfg.standardize)


def shards(cfg: DecentralizedConfig, ds) -> list[np.ndarray]:
    from .partition import dirichlet_partition, iid_partition, label_pairs_partition
    y = ds.y_train.numpy()
    if cfg.partition == "label-pairs":
        return label_pairs_partition(y, cfg.workers, num_classes=ds.num_classes, seed=cfg.seed)
    if cfg.partition == "dirichlet":
        return dirichlet_partition(y, cfg.workers, alpha=cfg.alpha, seed=cfg.seed)
    return iid_partition(y, cfg.workers, seed=cfg.seed)


def make_model(cfg: DecentralizedConfig, ds) -> torch.nn.Module:
    from .models import build_model
    return build_model(cfg.model, ds.input_shape, ds.num_classes, hidden=cfg.hidden, seed=cfg.seed)


def steps_per_epoch(cfg: DecentralizedConfig, num_train: int) -> int:
    """One pass over an average peer's shard; all peers step in lockstep."""
    return max(1, num_train // (cfg.workers * cfg.batch_size))


@dataclass
class Graph:
    nbrs: list[list[int]]
    W: torch.Tensor
    gap: float
    edges: int

    @classmethod
    def of(cls, cfg: DecentralizedConfig) -> "Graph":
        e = graph(cfg.topology, cfg.workers, cfg.seed)
        W = mixing(e, cfg.workers, cfg.mixing_rule)
        return cls(neighbours(e, cfg.workers), W, spectral_gap(W), len(e))

    def weights(self, i: int) -> dict[int, float]:
        return {j: float(self.W[i, j]) for j in [i, *self.nbrs[i]]}


class PeerTask:
    """Peer i's data shard, model and minibatch stream: the gradient oracle of the shared step."""

    def __init__(self, cfg: DecentralizedConfig, rank: int, ds, parts: Sequence[np.ndarray],
                 device: torch.device | str = "cpu") -> None:
        idx = torch.from_numpy(np.asarray(parts[rank], dtype=np.int64))
        self.device = torch.device(device)
        self.xs, self.ys = ds.x_train[idx].to(self.device), ds.y_train[idx].to(self.device)
        self.model = make_model(cfg, ds).to(self.device)
        self.x0 = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().clone()
        self.rank, self.batch, self.seed = rank, cfg.batch_size, cfg.seed
        self.last_loss = float("nan")
        self._perms: dict[int, torch.Tensor] = {}

    def batch_indices(self, t: int) -> torch.Tensor:
        """Positions t*B .. t*B+B-1 of a stream of seeded per-pass shuffles of this shard."""
        n = len(self.ys)
        out = []
        for k in range(t * self.batch, (t + 1) * self.batch):
            e, r = divmod(k, n)
            if e not in self._perms:
                g = torch.Generator().manual_seed(hash((self.seed, self.rank, e)) & 0x7FFFFFFF)
                self._perms = {e: torch.randperm(n, generator=g)}
            out.append(int(self._perms[e][r]))
        return torch.tensor(out, dtype=torch.int64, device=self.device)

    def grad(self, t: int, x: torch.Tensor) -> torch.Tensor:
        torch.nn.utils.vector_to_parameters(x, self.model.parameters())
        self.model.zero_grad(set_to_none=True)
        idx = self.batch_indices(t)
        loss = F.cross_entropy(self.model(self.xs[idx]), self.ys[idx])
        loss.backward()
        self.last_loss = float(loss.detach())
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.model.parameters()]).detach()


def _record(task: PeerTask, state: PeerState) -> dict[str, Any]:
    return {"loss": task.last_loss, "exchanges": list(state.exchanges)}


# -- engine 1: the single-process reference ---------------------------------------------------------
class LocalEngine:
    """All peers in this process, one thread each, exchanging through memory (`gossip.run_reference`)."""

    def __init__(self, cfg: DecentralizedConfig, g: Graph, ds, parts: Sequence[np.ndarray]) -> None:
        self.cfg, self.g, self.algo = cfg, g, cfg.algo()
        self.tasks = [PeerTask(cfg, i, ds, parts) for i in range(cfg.workers)]
        self.states = [PeerState.init(t.x0) for t in self.tasks]
        self.backend = "local"

    def train(self, start: int, steps: int) -> list[list[dict[str, Any]]]:
        """Run steps start..start+steps-1; returns records[step][peer].

        Torch runs with --threads intra-op threads meanwhile, like each actor: float results depend
        on the thread count, and with equal counts this path and the Ray path agree bit for bit.
        """
        out: list[list[dict[str, Any]]] = []
        old = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        try:
            run_reference(self.states, [t.grad for t in self.tasks], self.algo, self.g.W, self.g.nbrs, steps,
                          after_step=lambda t: out.append([_record(k, s) for k, s in zip(self.tasks, self.states)]),
                          start=start)
        finally:
            torch.set_num_threads(old)
        return out

    def models(self) -> list[torch.Tensor]:
        return [s.x.clone() for s in self.states]

    def bytes_sent(self) -> list[dict[int, int]]:
        return [dict(s.bytes_sent) for s in self.states]

    def close(self) -> None:
        pass


# -- engine 2: Ray actors over torch.distributed point-to-point ------------------------------------
class GossipPeer(Peer):
    """One peer as a Ray actor: its shard, its state, and a `DistNeighbourhood` to its neighbours."""

    def configure(self, cfg_dict: dict[str, Any], nbrs: list[int], weights: dict[int, float]) -> dict[str, Any]:
        from .p2p import DistNeighbourhood
        cwd = cfg_dict.pop("_driver_cwd", None)
        if cwd and os.path.isdir(cwd) and cwd not in sys.path:
            sys.path.insert(0, cwd)  # user model factories import as from the driver
        cfg = DecentralizedConfig(**cfg_dict)
        ds = load_data(cfg)
        self.task = PeerTask(cfg, self.rank, ds, shards(cfg, ds), self.device)
        self.state = PeerState.init(self.task.x0)
        self.algo = cfg.algo()
        self.codec = parse_codec(cfg.codec) if cfg.algorithm in ("cdproxsgt", "choco") else None
        self.comm = DistNeighbourhood(self.rank, self.world, nbrs, {int(k): v for k, v in weights.items()},
                                      self.device)
        return {"params": int(self.task.x0.numel()), "device": str(self.device)}

    def train(self, start: int, steps: int) -> list[dict[str, Any]]:
        out = []
        for t in range(start, start + steps):
            peer_step(self.state, lambda x, t=t: self.task.grad(t, x), self.algo, self.comm, t, self.codec)
            out.append(_record(self.task, self.state))
        return out

    def model(self) -> torch.Tensor:
        return self.state.x.detach().cpu().clone()

    def bytes_sent(self) -> dict[int, int]:
        return dict(self.state.bytes_sent)


class RayEngine:
    """Peers as `GossipPeer` actors; pass `group` to reuse a started `PeerGroup` of the same size."""

    def __init__(self, cfg: DecentralizedConfig, g: Graph, group: PeerGroup | None = None) -> None:
        self._owns = group is None
        self.group = group or PeerGroup(GossipPeer, cfg.workers, cfg.backend, ray_address=cfg.ray_address,
                                        threads=cfg.threads)
        if self.group.workers != cfg.workers:
            raise ConfigError("workers", f"{cfg.workers} differs from the peer group's {self.group.workers}",
                              str(self.group.workers))
        self.backend = self.group.backend
        try:
            import ray
            d = {**dataclasses.asdict(cfg), "_driver_cwd": os.getcwd()}
            ray.get([a.configure.remote(dict(d), g.nbrs[i], g.weights(i)) for i, a in enumerate(self.group.actors)])
        except Exception:
            self.close()
            raise

    def train(self, start: int, steps: int) -> list[list[dict[str, Any]]]:
        per_peer = self.group.call("train", start, steps)
        return [list(x) for x in zip(*per_peer)]

    def models(self) -> list[torch.Tensor]:
        return self.group.call("model")

    def bytes_sent(self) -> list[dict[int, int]]:
        return self.group.call("bytes_sent")

    def close(self) -> None:
        if self._owns:
            self.group.close()


def make_engine(cfg: DecentralizedConfig, g: Graph, ds, parts, group: PeerGroup | None = None):
    return LocalEngine(cfg, g, ds, parts) if cfg.engine == "local" else RayEngine(cfg, g, group)


# -- metrics (the authors' per-epoch set), computed once in the driver -----------------------------
def _evaluate(model: torch.nn.Module, x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[float, float]:
    torch.nn.utils.vector_to_parameters(x, model.parameters())
    model.eval()
    correct, loss = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(ys), 4096):
            out = model(xs[i:i + 4096])
            loss += float(F.cross_entropy(out, ys[i:i + 4096], reduction="sum"))
            correct += float((out.argmax(1) == ys[i:i + 4096]).sum())
    n = max(1, len(ys))
    return correct / n, loss / n


def model_metrics(xs: Sequence[torch.Tensor], model: torch.nn.Module, ds, l1: float,
                  train_sample: int = 10000, seed: int = 0) -> dict[str, float]:
    """Accuracy of x-bar and of each x_i, consensus error, f(x-bar) (+ L1), % non-zeros."""
    X = torch.stack([x.double() for x in xs])
    xbar64 = X.mean(0)
    consensus = float(((X - xbar64) ** 2).sum())
    xbar = xbar64.float()
    acc, loss = _evaluate(model, xbar, ds.x_test, ds.y_test)
    local = [_evaluate(model, x.float(), ds.x_test, ds.y_test) for x in xs]
    n = len(ds.y_train)
    if n > train_sample:
        sel = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:train_sample]
        tx, ty = ds.x_train[sel], ds.y_train[sel]
    else:
        tx, ty = ds.x_train, ds.y_train
    _, f_bar = _evaluate(model, xbar, tx, ty)
    return {"accuracy": acc, "test_loss": loss, "local_accuracy": float(np.mean([a for a, _ in local])),
            "local_accuracy_min": float(min(a for a, _ in local)), "consensus_error": consensus,
            "train_loss_xbar": f_bar, "objective": f_bar + l1 * float(xbar64.abs().sum()),
            "nonzero_pct": 100.0 * float((xbar.abs() > NONZERO).double().mean()),
            "local_nonzero_pct": float(np.mean([100.0 * float((x.abs() > NONZERO).double().mean()) for x in xs]))}


# -- the driver --------------------------------------------------------------------------------------
def run_decentralized(cfg: DecentralizedConfig, group: PeerGroup | None = None) -> dict[str, Any]:
    """Train `cfg` end to end; writes OUT_DIR/NAME/{config.toml, metrics.jsonl, summary.json, *.png}.

    `group`: a started PeerGroup of GossipPeer actors to reuse (benchmarks run many configs on one)."""
    from tqdm import tqdm

    from .gossip_time import GossipClock
    from .metrics import MetricsWriter

    cfg.validate()
    g = Graph.of(cfg)
    ds = load_data(cfg)
    parts = shards(cfg, ds)
    spe = steps_per_epoch(cfg, len(ds.y_train))
    total = cfg.epochs * spe
    eval_model = make_model(cfg, ds)
    d = sum(p.numel() for p in eval_model.parameters())
    run_dir = make_dir("out_dir", cfg.run_dir)
    write_resolved_config(run_dir, cfg)
    writer = MetricsWriter(run_dir)
    clock = GossipClock(cfg.network(), g.nbrs, cfg.batch_size)
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    engine = make_engine(cfg, g, ds, parts, group)
    try:
        def record(epoch: int, losses: list[float]) -> dict[str, Any]:
            sent = engine.bytes_sent()
            total_b = sum(sum(b.values()) for b in sent)
            row = {"round": epoch, "epoch": epoch, "step": epoch * spe, "algorithm": cfg.algorithm,
                   **model_metrics(engine.models(), eval_model, ds, cfg.l1, seed=cfg.seed),
                   "train_loss": float(np.mean(losses)) if losses else None,
                   "bytes_total": total_b, "bytes_per_peer": total_b / cfg.workers,
                   "cum_bytes_up": total_b / cfg.workers, "time": max(clock.time),
                   "elapsed": time.perf_counter() - t_start}
            writer.write(row)
            history.append(row)
            return row

        record(0, [])
        step = 0
        with tqdm(total=total, desc=f"{cfg.name} {cfg.algorithm}", unit="step", disable=not cfg.progress,
                  leave=False) as bar:
            for epoch in range(1, cfg.epochs + 1):
                losses: list[float] = []
                while step < epoch * spe:
                    n = min(epoch * spe - step, 25)
                    recs = engine.train(step, n)
                    for k, per_peer in enumerate(recs):
                        clock.step(step + k, [r["exchanges"] for r in per_peer])
                        losses.extend(r["loss"] for r in per_peer)
                    step += n
                    bar.update(n)
                row = record(epoch, losses)
                bar.set_postfix(acc=f"{row['accuracy']:.3f}", cons=f"{row['consensus_error']:.2g}")
        per_edge = {f"{i}->{j}": b for i, s in enumerate(engine.bytes_sent()) for j, b in sorted(s.items())}
        backend = engine.backend
    finally:
        engine.close()
    final = history[-1]
    summary = {"name": cfg.name, "algorithm": cfg.algorithm,
               "codec": cfg.codec if cfg.algorithm in ("cdproxsgt", "choco") else "none (dense float32)",
               "engine": cfg.engine, "backend": backend, "workers": cfg.workers, "topology": cfg.topology,
               "mixing": cfg.mixing_rule, "spectral_gap": g.gap, "edges": g.edges, "partition": cfg.partition,
               "dataset": cfg.dataset, "model": cfg.model, "params": d, "epochs": cfg.epochs, "steps": total,
               "final_accuracy": final["accuracy"], "final_local_accuracy": final["local_accuracy"],
               "best_accuracy": max(r["accuracy"] for r in history),
               "final_consensus_error": final["consensus_error"], "final_nonzero_pct": final["nonzero_pct"],
               "final_objective": final["objective"], "bytes_total": final["bytes_total"],
               "bytes_per_peer": final["bytes_per_peer"], "bytes_per_edge": per_edge,
               "dense_bytes_per_message": 4 * d, "simulated_time_s": final["time"],
               "simulated_compute_s": clock.compute_s, "wall_time_s": time.perf_counter() - t_start,
               "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.plots:
        plot_decentralized(history, run_dir, title=f"{cfg.name}: {cfg.algorithm}, {cfg.workers} peers, "
                                                   f"{cfg.topology}, {cfg.partition}")
    summary["history"] = history
    return summary


def plot_decentralized(history: Sequence[dict[str, Any]], out: Path, title: str = "") -> list[Path]:
    """accuracy vs epoch / simulated time / bytes (thinwire.plots) plus consensus error vs epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_run
    paths = plot_run(out)
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [r for r in history if r["epoch"] > 0]
    ax.semilogy([r["epoch"] for r in rows], [max(r["consensus_error"], 1e-12) for r in rows])
    ax.set_xlabel("epoch")
    ax.set_ylabel("consensus error sum_i ||x_i - x-bar||^2")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    p = Path(out) / "consensus_vs_epoch.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return [*paths, p]


__all__ = ["DecentralizedConfig", "run_decentralized", "PeerTask", "LocalEngine", "RayEngine", "GossipPeer",
           "Graph", "model_metrics", "shards", "plot_decentralized", "ENGINES", "DEC_PARTITIONS"]
