"""`thinwire decentralized`: DProxSGT / CDProxSGT / ChocoSGD / all-reduce peers on a graph (spec cdproxsgt.md).

n peers, each with its own data shard, run the shared per-peer step of `thinwire.gossip.step` and
talk to their graph neighbours only. Two engines run the same step with a different communicator:

- "ray": one Ray actor per peer (`thinwire.collective.group.PeerGroup`), messages over
  torch.distributed point-to-point (`thinwire.gossip.p2p.DistNeighbourhood`; gloo on CPU, NCCL on GPU);
- "local": the single-process reference, one thread per peer with in-memory mailboxes.

The driver owns everything global and nothing the peers need: per epoch it pulls every x_i and
computes the authors' metrics (accuracy of x-bar and of the local models, consensus error,
training loss, objective with the L1 term, % non-zeros), advances the simulated clock of the fault
model (`thinwire.gossip.clock`) from the message sizes the peers report, and writes metrics.jsonl,
summary.json and PNGs, and after every epoch an atomic checkpoint (every peer's `PeerState`: x,
tracker, public copies; the clock; the metrics so far) that `--resume` continues from bit for bit
(`thinwire.collective.resume`). With --engine ray a peer that dies or stops answering ends the run
within --peer-timeout (`PeerGroup.call`) with a one-line `PeerLost`."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from thinwire.collective import resume as resume_mod
from thinwire.collective.group import Peer, PeerGroup, PeerLost
from thinwire.collective.reducer import parse_codec
from thinwire.config import write_resolved_config
from thinwire.errors import ConfigError
from thinwire.gossip.config import (
    NONZERO,
    DecentralizedConfig,
    load_data,
    make_model,
    shards,
    steps_per_epoch,
)
from thinwire.gossip.step import PeerState, peer_step, run_reference
from thinwire.gossip.topology import graph, mixing, neighbours, spectral_gap
from thinwire.plots import plot_decentralized
from thinwire.rundir import make_dir

# Settings a resumed run may change: where it lives, how it is watched, and how many epochs it runs
# (the step size is constant and nothing else depends on the total).
MAY_CHANGE = resume_mod.WATCH_SETTINGS | {"epochs"}


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

    def state_dicts(self) -> list[dict[str, Any]]:
        return [s.state_dict() for s in self.states]

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> None:
        self.states = [PeerState.from_state_dict(d) for d in states]

    def close(self) -> None:
        pass


# -- engine 2: Ray actors over torch.distributed point-to-point ------------------------------------
class GossipPeer(Peer):
    """One peer as a Ray actor: its shard, its state, and a `DistNeighbourhood` to its neighbours."""

    def configure(self, cfg_dict: dict[str, Any], nbrs: list[int], weights: dict[int, float]) -> dict[str, Any]:
        from thinwire.gossip.p2p import DistNeighbourhood
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

    def state_dict(self) -> dict[str, Any]:
        return {**self.state.state_dict(), "rank": self.rank, "rng": torch.get_rng_state()}

    def load_state_dict(self, d: dict[str, Any]) -> int:
        if int(d["rank"]) != self.rank or d["x"].numel() != self.state.x.numel():
            raise ConfigError("resume", f"checkpoint state of peer {d['rank']} ({d['x'].numel()} parameters) does "
                              f"not fit peer {self.rank} ({self.state.x.numel()} parameters)", "the same run's checkpoint")
        self.state = PeerState.from_state_dict(d, self.device)
        torch.set_rng_state(d["rng"])
        return self.rank


class RayEngine:
    """Peers as `GossipPeer` actors; pass `group` to reuse a started `PeerGroup` of the same size."""

    def __init__(self, cfg: DecentralizedConfig, g: Graph, group: PeerGroup | None = None) -> None:
        self._owns = group is None
        self.group = group or PeerGroup(GossipPeer, cfg.workers, cfg.backend, ray_address=cfg.ray_address,
                                        threads=cfg.threads, peer_timeout=cfg.peer_timeout)
        if self.group.workers != cfg.workers:
            raise ConfigError("workers", f"{cfg.workers} differs from the peer group's {self.group.workers}",
                              str(self.group.workers))
        self.backend = self.group.backend
        try:
            d = {**dataclasses.asdict(cfg), "_driver_cwd": os.getcwd()}
            self.group.call_each("configure", [(dict(d), g.nbrs[i], g.weights(i)) for i in range(cfg.workers)])
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

    def state_dicts(self) -> list[dict[str, Any]]:
        return self.group.call("state_dict")

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> None:
        self.group.call_each("load_state_dict", [(d,) for d in states])

    def close(self) -> None:
        if self._owns or self.group.broken:  # a group that lost a peer is of no further use
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
def run_decentralized(cfg: DecentralizedConfig, group: PeerGroup | None = None, *,
                      resume: bool = False) -> dict[str, Any]:
    """Train `cfg` end to end; writes OUT_DIR/NAME/{config.toml, metrics.jsonl, summary.json, *.png} and,
    after every epoch, checkpoint.pt. `resume`: continue from that checkpoint, bit for bit.

    `group`: a started PeerGroup of GossipPeer actors to reuse (benchmarks run many configs on one).
    A lost peer (--engine ray) tears the group down and raises `PeerLost`: one line naming the rank,
    the last completed step and the checkpoint to resume from."""
    from tqdm import tqdm

    from thinwire.gossip.clock import GossipClock
    from thinwire.metrics import MetricsWriter

    cfg.validate()
    g = Graph.of(cfg)
    ds = load_data(cfg)
    parts = shards(cfg, ds)
    spe = steps_per_epoch(cfg, len(ds.y_train))
    total = cfg.epochs * spe
    eval_model = make_model(cfg, ds)
    d = sum(p.numel() for p in eval_model.parameters())
    run_dir = make_dir("out_dir", cfg.run_dir)
    settings = dataclasses.asdict(cfg)
    ckpt = resume_mod.read(run_dir, "decentralized", settings, MAY_CHANGE) if resume else None
    clock = GossipClock(cfg.network(), g.nbrs, cfg.batch_size)
    history: list[dict[str, Any]] = []
    first_epoch, saved_epoch = 1, None
    if ckpt is not None:
        history = list(ckpt["history"])
        clock.time, clock.compute_s = [float(t) for t in ckpt["clock"]["time"]], float(ckpt["clock"]["compute_s"])
        saved_epoch = int(ckpt["epoch"])
        first_epoch = saved_epoch + 1
        if saved_epoch > cfg.epochs:
            raise ConfigError("epochs", f"{cfg.epochs} is below the checkpoint's epoch {saved_epoch}",
                              f">= {saved_epoch} (a resumed run may only run longer)")
    write_resolved_config(run_dir, cfg)
    writer = MetricsWriter(run_dir, resume_after=saved_epoch)
    t_start = time.perf_counter() - (float(ckpt["elapsed"]) if ckpt is not None else 0.0)
    engine = make_engine(cfg, g, ds, parts, group)
    step = (first_epoch - 1) * spe
    try:
        if isinstance(engine, RayEngine):
            engine.group.write_peers(run_dir)
        if ckpt is not None:
            engine.load_state_dicts(ckpt["peers"])

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

        if ckpt is None:
            record(0, [])
        with tqdm(total=total, initial=step, desc=f"{cfg.name} {cfg.algorithm}", unit="step",
                  disable=not cfg.progress, leave=False) as bar:
            for epoch in range(first_epoch, cfg.epochs + 1):
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
                resume_mod.save(run_dir, "decentralized", settings, epoch=epoch, step=step,
                                body={"peers": engine.state_dicts(), "history": history,
                                      "clock": {"time": list(clock.time), "compute_s": clock.compute_s},
                                      "elapsed": time.perf_counter() - t_start})
                saved_epoch = epoch
        per_edge = {f"{i}->{j}": b for i, s in enumerate(engine.bytes_sent()) for j, b in sorted(s.items())}
        backend = engine.backend
    except PeerLost as e:
        raise e.with_progress(resume_mod.stopped_at(step, spe, cfg.epochs, saved_epoch, run_dir)) from None
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
