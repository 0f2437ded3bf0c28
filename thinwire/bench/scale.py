"""`thinwire bench scale`: every engine at real model sizes, against its own local-training floor.

For each engine (simulate, served, allreduce, decentralized) and each model (resnet20 0.27M,
fedavg-cnn, resnet18 11.2M parameters; all on MNIST-1D, whose 1-D variants keep the 2-D models'
weight counts) one short job runs, and the same process then measures:

- wall per round: round end to round end from the engine's own metrics (federated engines: one
  round = `--per-round` clients' local epoch; allreduce / decentralized: one round = one step),
  the first round (worker start-up, first-touch allocations) and evaluation rounds left out;
- the local-training floor of those rounds, timed alone in this process with one torch thread:
  the same clients' `local_train` (federated) or the same forward/backward/update on the same
  batch size (peer engines), then divided over the engine's parallel units the way the engine
  schedules them (simulate: Ray workers take clients i::W; served: each fleet actor its id
  range; peers: W ranks on min(W, cores) cores). wall / floor is the engine's overhead factor;
- peak RSS, sampled every 0.2 s over the process tree with psutil: the server (the driver for
  simulate, which hosts the round engine; the ServerActor for served; the coordinating driver for
  the peer engines), the largest single worker, and all workers together;
- simulate only, because wall time on a shared host moves with everyone else's load: CPU seconds
  per round of the workers (during the dispatch) and of the driver (decode, fold, finalize,
  metrics, checkpoint) against the floor's CPU seconds: `cpu_ratio`, the engine's overhead in
  work rather than in time;
- bytes per round (uplink + downlink for federated runs, all-reduce or gossip payload per worker
  for the peer engines) and the test accuracy reached (short runs: a cost figure, not a
  converged accuracy).

The allreduce and decentralized jobs read a seeded `--steps` x workers x batch subset of MNIST-1D
written to a temporary .npz, so their step count is fixed by `--steps`.

One job, the scale benchmark, kept in one module although it runs past 420 lines: its four engine
runners share the floor, CPU and RSS measurements and the report, and exist for nothing else.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from thinwire.errors import ConfigError

ENGINES = ("simulate", "served", "allreduce", "decentralized")
MODELS = ("resnet20", "fedavg-cnn", "resnet18")
TARGET = 1.15  # issue 21: simulate, 100 clients x 10 per round, resnet20 on MNIST-1D: wall <= 1.15 x floor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo models (default: "
                   f"{','.join(MODELS)})")
    p.add_argument("--dataset", default="mnist1d", help="federated data set (default: mnist1d)")
    p.add_argument("--clients", type=int, default=100, help="federated clients (default: 100)")
    p.add_argument("--per-round", type=int, default=10, help="clients per round (default: 10)")
    p.add_argument("--rounds", type=int, default=6, help="federated rounds (default: 6; first one untimed)")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs per client (default: 1)")
    p.add_argument("--steps", type=int, default=12, help="allreduce / decentralized steps (default: 12)")
    p.add_argument("--workers", type=int, default=0, help="simulation workers / peers (default: cores, >= 2 peers)")
    p.add_argument("--codec", default="identity", help="update codec of the federated runs (default: identity)")
    p.add_argument("--feedback", default="none", help="client error feedback of the federated runs: none, ef, def, "
                   "defa (default: none)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size everywhere (default: 16)")
    p.add_argument("--driver-threads", type=int, default=0,
                   help="torch threads of the simulate driver while it runs (default 0: torch's default, what "
                        "`thinwire simulate` uses)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", metavar="FILE", help="write all results here")
    p.add_argument("--plot", default="", metavar="FILE", help="PNG: wall / floor and peak RSS per engine and model")


# -- peak RSS over the process tree ------------------------------------------------------------------
class RssSampler:
    """Samples this process and its descendants every `period` s; classifies by command line."""

    def __init__(self, server_marker: str | None, worker_markers: tuple[str, ...], period: float = 0.2):
        self.server_marker, self.worker_markers, self.period = server_marker, worker_markers, period
        self.peak = {"server": 0, "worker_max": 0, "workers_sum": 0, "tree": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        kids: dict[int, list[psutil.Process]] = {}
        for pr in psutil.process_iter():          # one pass over /proc: a child exiting mid-walk is skipped
            try:
                kids.setdefault(pr.ppid(), []).append(pr)
            except psutil.Error:
                continue
        procs, todo = [], [me]
        while todo:
            pr = todo.pop()
            procs.append(pr)
            todo.extend(kids.get(pr.pid, []))
        server = workers_sum = worker_max = tree = 0
        for pr in procs:
            try:
                rss = pr.memory_info().rss
                cmd = " ".join(pr.cmdline())
            except psutil.Error:
                continue
            tree += rss
            if (self.server_marker is None and pr.pid == me.pid) or (self.server_marker and self.server_marker in cmd):
                server += rss
            elif any(m in cmd for m in self.worker_markers):
                workers_sum += rss
                worker_max = max(worker_max, rss)
        for k, v in (("server", server), ("worker_max", worker_max), ("workers_sum", workers_sum), ("tree", tree)):
            self.peak[k] = max(self.peak[k], v)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)


# -- the floor ------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def federated_floor(cfg, rows: list[dict[str, Any]], groups: Callable[[list[int]], list[list[int]]]) -> list[dict]:
    """Per timed round: the accepted clients' local training alone in this process (1 thread),
    serial and as scheduled over the engine's parallel units (`groups` of client ids)."""
    from thinwire.data.datasets import dataset_from_config
    from thinwire.models import model_from_config
    from thinwire.training import get_flat, local_train, set_flat

    data = dataset_from_config(cfg)
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg, data)
    start = get_flat(model)
    cost: dict[int, float] = {}
    cpu_cost: dict[int, float] = {}

    def train(c: int) -> float:
        if c not in cost:
            x, y = data.client_data(c)
            set_flat(model, start)
            c0 = time.process_time()
            cost[c] = _timed(lambda: local_train(model, x, y, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                                                 lr=cfg.lr, momentum=cfg.momentum, seed=c))
            cpu_cost[c] = time.process_time() - c0
        return cost[c]

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = data.client_data(0)
        local_train(model, x, y, batch_size=cfg.batch_size, lr=cfg.lr)  # warm-up, untimed
        out = []
        for r in rows:
            clients = sorted(r["accepted_clients"])
            serial = sum(train(c) for c in clients)
            scheduled = max(sum(train(c) for c in g) for g in groups(clients) if g)
            out.append({"round": r["round"], "serial_s": serial, "floor_s": scheduled,
                        "serial_cpu_s": sum(cpu_cost[c] for c in clients)})
        return out
    finally:
        torch.set_num_threads(old)


def step_floor(model_name: str, shape: tuple[int, ...], classes: int, batch: int, ranks: int, cores: int,
               reps: int = 5) -> dict[str, float]:
    """One rank's forward/backward/update on `batch` samples (median of `reps`, 1 thread), times
    ranks / min(ranks, cores): the compute a step of the peer engines cannot go below."""
    import torch.nn.functional as F

    from thinwire.models import build_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(model_name, shape, classes, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        step()
        t = statistics.median(_timed(step) for _ in range(reps))
    finally:
        torch.set_num_threads(old)
    return {"step_s": t, "floor_s": t * ranks / min(ranks, cores), "numel": sum(p.numel() for p in model.parameters())}


def codec_seconds(spec: str, numel: int, reps: int = 5) -> float:
    """Encode + decode of one d-vector with `spec` (median, 1 thread): what one compressed gossip
    message costs a peer beside its compute."""
    from thinwire import compression
    from thinwire.compression.base import Context

    codec = compression.from_spec(spec)
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def once(i: int) -> None:
            ctx = Context(seed=0, round=i, client_id=0)
            codec.decode(codec.encode(x, ctx), ctx)
        once(0)
        return statistics.median(_timed(lambda i=i: once(i)) for i in range(1, reps + 1))
    finally:
        torch.set_num_threads(old)


# -- one engine x model ---------------------------------------------------------------------------
def _timed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rounds after the first that evaluated nothing, with their round-end-to-round-end wall time."""
    return [{**r, "wall_step": r["wall_time"] - prev["wall_time"]}
            for prev, r in zip(rows, rows[1:]) if r.get("accuracy") is None]


def _federated_result(cfg, rows: list[dict[str, Any]], floor: list[dict[str, Any]], rss: dict, extra: dict) -> dict:
    timed = _timed_rows(rows)
    walls = [r["wall_step"] for r in timed]
    floors = [f["floor_s"] for f in floor]
    last = [r for r in rows if r.get("accuracy") is not None]
    wall, fl = statistics.median(walls), statistics.median(floors)
    return {"rounds_timed": len(timed), "wall_per_round_s": wall, "wall_spread_s": [min(walls), max(walls)],
            "engine_round_s": statistics.median(r["round_wall"] for r in timed),
            "floor_per_round_s": fl, "serial_per_round_s": statistics.median(f["serial_s"] for f in floor),
            "ratio": wall / fl if fl > 0 else None,
            "bytes_per_round": statistics.median(r["bytes_up"] + r["bytes_down"] for r in timed),
            "accuracy": last[-1]["accuracy"] if last else None, "rounds": len(rows), "rss": rss, **extra}


def federated_config(args, model: str, out_dir: str, name: str, workers: int = 0):
    from thinwire.config import RunConfig, build

    return build(RunConfig, {
        "name": name, "out_dir": out_dir, "seed": args.seed, "rounds": args.rounds, "eval_every": args.rounds,
        "dataset": args.dataset, "clients": args.clients, "per_round": args.per_round,
        "partition": "natural" if args.dataset == "stdlib-text" else "dirichlet", "alpha": 0.5,
        "model": model, "lr": 0.05, "momentum": 0.0, "batch_size": args.batch_size,
        "local_epochs": args.local_epochs, "codec": args.codec, "feedback": args.feedback, "workers": workers,
        "progress": False,
    })


def run_simulate(args, model: str, tmp: str, cores: int) -> dict[str, Any]:
    import ray

    from thinwire.sim.engine import simulate

    import psutil

    from thinwire.sim.engine import WorkerPool

    def cpu(procs: list) -> float:
        total = 0.0
        for pr in procs:
            try:
                t = pr.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    class TimedPool(WorkerPool):
        """The engine's own pool; also records each round's dispatch time and the CPU seconds the
        workers and the driver spent (load-independent, unlike wall time on a shared host)."""
        dispatch: list[float] = []
        marks: list[tuple[float, float, float, float]] = []   # driver / workers CPU at dispatch start, end
        workers: list = []

        def run(self, global_vec, jobs):
            me = psutil.Process()
            d0, w0 = cpu([me]), cpu(self.workers)
            t = time.perf_counter()
            out = super().run(global_vec, jobs)
            self.dispatch.append(time.perf_counter() - t)
            if not self.workers:                  # found once, after round 0 (untimed)
                self.workers = [c for c in me.children(recursive=True) if "ray::SimWorker" in " ".join(c.cmdline())]
                w0 = cpu(self.workers)
            self.marks.append((d0, w0, cpu([me]), cpu(self.workers)))
            return out

    workers = args.workers or cores
    cfg = federated_config(args, model, tmp, f"sim-{model}", workers)
    if ray.is_initialized():
        ray.shutdown()
    threads = torch.get_num_threads()
    if args.driver_threads:
        torch.set_num_threads(args.driver_threads)
    with RssSampler(None, ("ray::SimWorker",)) as s:
        pool = TimedPool(cfg)
        try:
            res = simulate(cfg, pool=pool)
        finally:
            s.sample()               # the workers are alive here: a run shorter than one period is measured too
            pool.close()
            torch.set_num_threads(threads)
    timed = _timed_rows(res.metrics)
    floor = federated_floor(cfg, timed, lambda cl: [cl[i::workers] for i in range(workers)])
    dispatch = [pool.dispatch[r["round"]] for r in timed]
    m = pool.marks
    workers_cpu = [m[r["round"]][3] - m[r["round"]][1] for r in timed]
    driver_cpu = [m[r["round"] + 1][0] - m[r["round"]][2] for r in timed if r["round"] + 1 < len(m)]
    serial_cpu = statistics.median(f["serial_cpu_s"] for f in floor)
    extra = {"workers_cpu_per_round_s": statistics.median(workers_cpu),
             "driver_cpu_per_round_s": statistics.median(driver_cpu) if driver_cpu else None,
             "serial_cpu_per_round_s": serial_cpu,
             "cpu_ratio": (statistics.median(workers_cpu) + (statistics.median(driver_cpu) if driver_cpu else 0.0))
             / serial_cpu if serial_cpu > 0 else None,
             "parallel": f"{workers} Ray workers", "driver_threads": args.driver_threads or threads,
             "workers_per_round_s": statistics.median(dispatch),
             "driver_per_round_s": statistics.median(r["wall_step"] - d for r, d in zip(timed, dispatch))}
    return _federated_result(cfg, res.metrics, floor, s.peak, extra)


def run_served(args, model: str, tmp: str, cores: int) -> dict[str, Any]:
    from thinwire.launch import launch, split_ids
    from thinwire.server.app import ServeOptions

    actors = max(1, args.workers or cores)
    cfg = federated_config(args, model, tmp, f"served-{model}")
    opts = ServeOptions(host="127.0.0.1", port=0, heartbeat_interval=0.5, heartbeat_timeout=60.0, join_wait=120.0,
                        linger=1.0)
    client_cpus = max(0.1, (cores - 0.5) / actors)
    with RssSampler("ray::ServerActor", ("ray::FleetActor",)) as s:
        res = launch(cfg, opts, client_actors=actors, client_cpus=client_cpus, server_cpus=0.5,
                     server_host="127.0.0.1", secure=False, timeout=1800)
    ranges = [set(g) for g in split_ids(cfg.clients, actors)]
    floor = federated_floor(cfg, _timed_rows(res["metrics"]),
                            lambda cl: [[c for c in cl if c in g] for g in ranges])
    return _federated_result(cfg, res["metrics"], floor, s.peak, {"parallel": f"{actors} fleet actors (gRPC)"})


def _subset_npz(args, tmp: str, ranks: int) -> str:
    """A seeded steps x ranks x batch slice of the training set (and the full test set) as .npz."""
    from thinwire.data.loaders import load_dataset

    ds = load_dataset(args.dataset, seed=args.seed, standardize=True)
    n = min(len(ds.y_train), args.steps * ranks * args.batch_size)
    pick = np.sort(np.random.default_rng(args.seed).permutation(len(ds.y_train))[:n])
    path = Path(tmp) / f"{args.dataset}-{n}.npz"
    np.savez(path, x=ds.x_train[pick].numpy(), y=ds.y_train[pick].numpy(), x_test=ds.x_test.numpy(),
             y_test=ds.y_test.numpy())
    return str(path)


def run_allreduce(args, model: str, tmp: str, cores: int) -> dict[str, Any]:
    from thinwire.collective.config import AllreduceConfig
    from thinwire.collective.engine import run_allreduce as go
    from thinwire.config import build

    ranks = max(2, args.workers or cores)
    cfg = build(AllreduceConfig, {"name": f"allreduce-{model}", "out_dir": tmp, "seed": args.seed, "workers": ranks,
                                  "method": "sgd", "dataset": "npz", "data_path": _subset_npz(args, tmp, ranks),
                                  "model": model, "batch_size": args.batch_size, "epochs": 1, "lr": 0.05,
                                  "lr_decay_at": "", "progress": False, "plots": False})
    with RssSampler(None, ("ray::",)) as s:
        summ = go(cfg)
    shape = tuple(int(v) for v in np.load(cfg.data_path)["x"].shape[1:])
    fl = step_floor(model, shape, 10, args.batch_size, ranks, cores)
    wall = summ["step_time"]     # measured in the workers, per step: compute + all-reduce (evaluation apart)
    return {"steps": summ["steps"], "wall_per_round_s": wall, "engine_compute_s": summ["compute_time"],
            "allreduce_s": summ["allreduce_time"], "floor_per_round_s": fl["floor_s"], "serial_per_round_s":
            fl["step_s"] * ranks, "ratio": wall / fl["floor_s"], "bytes_per_round": summ["bytes_per_step"],
            "accuracy": summ["final_accuracy"], "rss": s.peak, "parallel": f"{ranks} ranks (gloo)"}


def run_decentralized(args, model: str, tmp: str, cores: int) -> dict[str, Any]:
    """Drives the gossip engine's step API the way `run_decentralized` does, timing the training
    steps apart from the per-epoch evaluation (which scores every peer's model)."""
    from thinwire.config import build
    from thinwire.gossip.config import DecentralizedConfig, load_data, make_model, shards
    from thinwire.gossip.engine import Graph, make_engine, model_metrics

    peers = max(2, args.workers or cores)
    cfg = build(DecentralizedConfig, {"name": f"dec-{model}", "out_dir": tmp, "seed": args.seed, "workers": peers,
                                      "algorithm": "cdproxsgt", "codec": "topk:fraction=0.3", "dataset": "npz",
                                      "data_path": _subset_npz(args, tmp, peers), "partition": "iid",
                                      "model": model, "batch_size": args.batch_size, "epochs": 1, "lr": 0.05,
                                      "progress": False, "plots": False})
    ds = load_data(cfg)
    with RssSampler(None, ("ray::",)) as s:
        engine = make_engine(cfg, Graph.of(cfg), ds, shards(cfg, ds))
        try:
            engine.train(0, 1)                                  # first step: warm-up, untimed
            t = time.perf_counter()
            engine.train(1, args.steps - 1)
            wall = (time.perf_counter() - t) / (args.steps - 1)
            sent = sum(sum(b.values()) for b in engine.bytes_sent())
            acc = model_metrics(engine.models(), make_model(cfg, ds), ds, cfg.l1, seed=cfg.seed)["accuracy"]
        finally:
            engine.close()
    fl = step_floor(model, tuple(ds.input_shape), ds.num_classes, args.batch_size, peers, cores)
    codec_s = codec_seconds(cfg.codec, fl["numel"])
    return {"steps": args.steps, "codec_s_per_message": codec_s, "wall_per_round_s": wall, "floor_per_round_s": fl["floor_s"],
            "serial_per_round_s": fl["step_s"] * peers, "ratio": wall / fl["floor_s"],
            "bytes_per_round": sent / peers / args.steps, "accuracy": acc, "rss": s.peak,
            "parallel": f"{peers} peers (ring, cdproxsgt top-30%)"}


RUNNERS = {"simulate": run_simulate, "served": run_served, "allreduce": run_allreduce,
           "decentralized": run_decentralized}


# -- reporting --------------------------------------------------------------------------------------
def report(results: list[dict[str, Any]]) -> str:
    from thinwire.metrics import format_table, human_bytes

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    rows = [(r["engine"], r["model"], f"{r['params'] / 1e6:.2f}M", f(r.get("wall_per_round_s"), ".3f"),
             f(r.get("floor_per_round_s"), ".3f"), f(r.get("ratio"), ".2f"),
             human_bytes(r["rss"]["server"]), human_bytes(r["rss"]["worker_max"]), human_bytes(r["rss"]["workers_sum"]),
             human_bytes(r.get("bytes_per_round") or 0), f(r.get("accuracy"), ".3f"), r.get("error", ""))
            for r in results]
    return format_table(["engine", "model", "d", "wall/round s", "floor s", "wall/floor", "server RSS",
                         "worker RSS max", "workers RSS sum", "bytes/round", "accuracy", "error"], rows)


def plot(path: str, results: list[dict[str, Any]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.get("ratio")]
    labels = [f"{r['engine']}\n{r['model']}" for r in ok]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(ok) + 4), 4.2))
    a1.bar(range(len(ok)), [r["ratio"] for r in ok], color="tab:blue")
    a1.axhline(TARGET, color="tab:red", ls="--", lw=1, label=f"target {TARGET}x (simulate)")
    a1.set_ylabel("wall per round / local-training floor")
    a1.legend(fontsize=8)
    w = 0.4
    xs = np.arange(len(ok))
    a2.bar(xs - w / 2, [r["rss"]["server"] / 2**20 for r in ok], w, label="server / driver")
    a2.bar(xs + w / 2, [r["rss"]["worker_max"] / 2**20 for r in ok], w, label="largest worker")
    a2.set_ylabel("peak RSS (MiB)")
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.set_xticks(range(len(ok)))
        a.set_xticklabels(labels, fontsize=7)
        a.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check(args) -> tuple[list[str], list[str]]:
    from thinwire.config import check_int
    from thinwire.models import BUILTIN_MODELS

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for e in engines:
        if e not in ENGINES:
            raise ConfigError("engines", f"unknown engine {e!r}", ", ".join(ENGINES))
    for m in models:
        if m not in BUILTIN_MODELS:
            raise ConfigError("models", f"unknown model {m!r}", ", ".join(BUILTIN_MODELS))
    if not engines or not models:
        raise ConfigError("engines" if not engines else "models", "empty list", "at least one name")
    if args.dataset != "mnist1d" and set(engines) & {"allreduce", "decentralized"}:
        raise ConfigError("dataset", f"{args.dataset} with the peer engines", "mnist1d (or only simulate, served)")
    check_int("clients", args.clients, 1)
    check_int("per_round", args.per_round, 1, args.clients)
    check_int("rounds", args.rounds, 3)
    check_int("local_epochs", args.local_epochs, 1)
    check_int("steps", args.steps, 2)
    check_int("workers", args.workers, 0)
    check_int("batch_size", args.batch_size, 1)
    check_int("driver_threads", args.driver_threads, 0)
    return engines, models


def _write_json(args, cores: int, results: list[dict[str, Any]]) -> None:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    doc = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "cpus": cores,
           "torch": torch.__version__, "results": results}
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")


def run(args: argparse.Namespace) -> int:
    from thinwire.data.datasets import federate
    from thinwire.models import build_model, num_parameters

    engines, models = _check(args)
    cores = os.cpu_count() or 1
    data = federate(args.dataset, args.clients, "natural" if args.dataset == "stdlib-text" else "iid", seed=args.seed)
    print(f"bench scale: {args.dataset}, {args.clients} clients x {args.per_round} per round, {args.rounds} rounds, "
          f"batch {args.batch_size}, codec {args.codec}, feedback {args.feedback}; peer engines {args.steps} steps; {cores} CPUs; "
          f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="thinwire-bench-scale-") as tmp:
        for model in models:
            d = num_parameters(build_model(model, data.input_shape, data.num_classes))
            for engine in engines:
                print(f"running {engine} / {model} (d = {d:,}) ...", flush=True)
                t0 = time.perf_counter()
                try:
                    r = RUNNERS[engine](args, model, tmp, cores)
                except Exception as e:  # report the miss with its cause, keep measuring the rest
                    r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                         "rss": {"server": 0, "worker_max": 0, "workers_sum": 0, "tree": 0}}
                r.update(engine=engine, model=model, params=d, total_s=time.perf_counter() - t0,
                         load=open("/proc/loadavg").read().split()[:3])
                results.append(r)
                if args.json:                       # after every run: a long bench keeps what it measured
                    _write_json(args, cores, results)
                print(f"  {engine} / {model}: wall/round {r.get('wall_per_round_s', float('nan')):.3f} s, floor "
                      f"{r.get('floor_per_round_s', float('nan')):.3f} s, ratio {r.get('ratio') or float('nan'):.2f}"
                      f"{'  ERROR ' + r['error'] if 'error' in r else ''}", flush=True)
    print()
    print(report(results))
    sim = [r for r in results if r["engine"] == "simulate" and r["model"] == "resnet20" and r.get("ratio")]
    if sim:
        ok = sim[0]["ratio"] <= TARGET
        print(f"\ntarget (simulate, resnet20: wall per round <= {TARGET} x floor): "
              f"{'MET' if ok else 'NOT met'} ({sim[0]['ratio']:.2f}x)")
    if args.json:
        print(f"wrote {args.json}")
    if args.plot:
        plot(args.plot, results, f"thinwire bench scale: {args.dataset}, {args.clients} clients x {args.per_round}/round, "
             f"{cores} CPUs")
        print(f"wrote {args.plot}")
    return 0
