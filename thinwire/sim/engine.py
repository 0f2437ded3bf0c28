"""The simulation engine: many virtual clients on a few Ray worker actors, timed by a virtual clock.

Per round: the RoundPolicy selects clients (with over-commitment); workers train and encode them
in batches; for every client the NetworkModel gives download, compute (with straggling) and
upload time, and the chunks lost on the way; the policy accepts the first K finishers within the
deadline; the strategy aggregates their decoded updates. Every update is serialised to bytes, so
the bytes counted are the bytes a real wire would carry.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thinwire import checkpoint, compression
from thinwire.config import RunConfig, to_dict
from thinwire.faults import NetworkModel
from thinwire.metrics import MetricsWriter, format_table, human_bytes
from thinwire.server.driver import RoundPolicy
from thinwire.server.strategy import make_strategy
from thinwire.task import TaskSpec, decode_update
from thinwire.training import evaluate, get_flat, model_spec, set_flat

from .store import ClientStateStore
from thinwire.data import dataset_from_config
from thinwire.models import model_from_config

from .worker import SimWorker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        accs = [m["accuracy"] for m in self.metrics if m.get("accuracy") is not None]
        return accs[-1] if accs else float("nan")


class WorkerPool:
    """Ray actors running SimWorker; starts a local Ray unless attached to one."""

    def __init__(self, cfg: RunConfig) -> None:
        """Start the actors without waiting for them: their imports overlap the driver's set-up."""
        import ray

        self._ray = ray
        self.started_ray = False
        # Keep Ray from rewriting CUDA_VISIBLE_DEVICES for CPU-only actors (and from warning about it).
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                          log_to_driver=False, configure_logging=False)
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
            self.started_ray = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = float(ray.cluster_resources().get("GPU", 0))
        n = cfg.workers or max(1, cpus)
        opts: dict[str, Any] = {"num_cpus": max(cpus / n, 0.01) if cfg.workers else 1}
        if gpus > 0:
            opts["num_gpus"] = gpus / n
        remote = ray.remote(SimWorker).options(**opts)
        cfg_dict = to_dict(cfg)
        self.actors = [remote.remote(cfg_dict) for _ in range(n)]

    def load(self, data) -> None:
        """Give every actor the driver's data set (one object-store copy) and wait until ready."""
        ref = self._ray.put(data)
        self._ray.get([a.load.remote(ref) for a in self.actors])

    def run(self, global_vec: torch.Tensor, jobs: list[tuple[dict, Any]]) -> list:
        ray = self._ray
        ref = ray.put(global_vec)
        n = len(self.actors)
        batches = [jobs[i::n] for i in range(n)]
        futures = [a.run.remote(ref, b) for a, b in zip(self.actors, batches) if b]
        return [r for batch in ray.get(futures) for r in batch]

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        if self.started_ray:
            self._ray.shutdown()


def simulate(cfg: RunConfig, *, resume: bool = False, pool: WorkerPool | None = None) -> RunResult:
    """Run a federated simulation; returns the per-round metrics (also in RUN_DIR/metrics.jsonl)."""
    cfg.validate()
    wall0 = time.perf_counter()
    own_pool = pool is None
    pool = pool or WorkerPool(cfg)
    try:
        return _run(cfg, pool, resume, wall0)
    finally:
        if own_pool:
            pool.close()


def _run(cfg: RunConfig, pool: WorkerPool, resume: bool, wall0: float) -> RunResult:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = dataset_from_config(cfg)
    model = model_from_config(cfg, data)
    spec = model_spec(model)
    x_test, y_test = data.test_data()
    summary_text = data.summary()
    (run_dir / "partition.txt").write_text(summary_text + "\n")
    if cfg.progress:
        print(summary_text, flush=True)
    net = NetworkModel.from_config(cfg)
    policy = RoundPolicy.from_config(cfg)
    strategy = make_strategy(cfg)
    store = ClientStateStore()
    codec = compression.from_spec(cfg.codec)
    holes_ok = cfg.loss_policy == "holes" and codec.supports_holes
    if cfg.loss_policy == "holes" and not codec.supports_holes and cfg.loss != "none":
        log.warning("codec %s cannot decode around lost chunks; its uploads are retransmitted", codec.name)
    global_vec = get_flat(model)
    down_bytes = compression.get("identity").encode(global_vec).nbytes

    start_round, sim_time = 0, 0.0
    totals = {"bytes_up": 0, "bytes_down": 0, "wall_before": 0.0}
    ckpt = checkpoint.load(run_dir) if resume else None
    if ckpt is not None:
        global_vec = ckpt["global"]
        strategy.load_state_dict(ckpt["strategy"])
        store.load_state_dict(ckpt["store"])
        start_round, sim_time = ckpt["round"] + 1, ckpt["sim_time"]
        totals.update(ckpt["totals"])
        log.info("resuming %s after round %d", run_dir, ckpt["round"])
    writer = MetricsWriter(run_dir, resume_after=ckpt["round"] if ckpt else None)
    (run_dir / "config.toml").write_text(_to_toml(to_dict(cfg)))

    pool.load(data)
    metrics: list[dict[str, Any]] = []
    bar = _progress(cfg, start_round)
    try:
        for rnd in range(start_round, cfg.rounds):
            t_round = time.perf_counter()
            selected = policy.select(rnd)
            extra = strategy.configure_round(rnd, selected)
            tasks = {cid: TaskSpec.from_config(cfg, rnd, cid, **extra) for cid in selected}
            results = pool.run(global_vec, [(tasks[c].to_dict(), store.get(c)) for c in selected])

            finish, uploads, downloads = {}, {}, {}
            for r in results:
                down = net.download(r.client_id, rnd, down_bytes)
                comp = net.compute_time(r.client_id, rnd, r.num_samples * cfg.local_epochs)
                up = (net.upload(r.client_id, rnd, len(r.payload), r.header_size) if holes_ok
                      else net.transfer(r.client_id, rnd, len(r.payload), "up", r.header_size, policy="retransmit"))
                finish[r.client_id] = down.time_s + comp + up.time_s
                uploads[r.client_id], downloads[r.client_id] = up, down
                store.put(r.client_id, r.state)
            outcome = policy.close_by_times(finish)

            strategy.begin_round(rnd, global_vec)
            by_id = {r.client_id: r for r in results}
            for cid in outcome.accepted:
                r = by_id[cid]
                update = decode_update(r.payload, tasks[cid], spec.segments, net.holes(uploads[cid]))
                strategy.accumulate(cid, update, r.num_samples, {"train_loss": r.train_loss})
            if policy.enough(len(outcome.accepted)):
                global_vec, agg = strategy.finalize()
            else:
                strategy.finalize()
                agg = {"aggregated": 0, "skipped": True}
            sim_time += outcome.round_time

            # Bytes actually sent: every selected client downloads and uploads (late ones too).
            bytes_up = sum(u.wire_bytes for u in uploads.values())
            bytes_down = sum(d.wire_bytes for d in downloads.values())
            totals["bytes_up"] += bytes_up
            totals["bytes_down"] += bytes_down
            row: dict[str, Any] = {
                "round": rnd,
                "sim_time": sim_time,
                "round_time": outcome.round_time,
                "selected": len(selected),
                "accepted": len(outcome.accepted),
                "dropped_clients": outcome.late,
                "stragglers": [c for c in selected if net.straggler_factor(c, rnd) > 1.0],
                "bytes_up": bytes_up,
                "bytes_down": bytes_down,
                "cum_bytes_up": totals["bytes_up"],
                "cum_bytes_down": totals["bytes_down"],
                "dropped_chunks": sum(u.dropped_chunks for u in uploads.values()),
                "retransmitted_chunks": sum(u.retransmitted_chunks + downloads[c].retransmitted_chunks
                                            for c, u in uploads.items()),
                "hole_chunks": sum(len(uploads[c].lost_chunks) for c in outcome.accepted),
                "train_loss": agg.get("train_loss"),
                "aggregated": agg.get("aggregated", 0),
            }
            if (rnd + 1) % cfg.eval_every == 0 or rnd == cfg.rounds - 1:
                set_flat(model, global_vec, spec)
                row["accuracy"], row["loss"] = evaluate(model, x_test, y_test)
            row["round_wall"] = time.perf_counter() - t_round
            row["wall_time"] = totals["wall_before"] + time.perf_counter() - wall0
            writer.write(row)
            metrics.append(row)
            checkpoint.save(run_dir, {"round": rnd, "global": global_vec, "strategy": strategy.state_dict(),
                                      "store": store.state_dict(), "sim_time": sim_time,
                                      "totals": {**totals, "wall_before": row["wall_time"]}})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(acc=f"{row.get('accuracy', float('nan')):.3f}", sim=f"{sim_time:.0f}s",
                                up=human_bytes(totals["bytes_up"]))
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(metrics) if metrics else {}
    return RunResult(run_dir=run_dir, metrics=metrics, summary=summary)


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [m["accuracy"] for m in metrics if m.get("accuracy") is not None]
    last = metrics[-1]
    return {
        "rounds": last["round"] + 1,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "sim_time_s": last["sim_time"],
        "wall_time_s": last["wall_time"],
        "bytes_up": last["cum_bytes_up"],
        "bytes_down": last["cum_bytes_down"],
        "straggler_events": sum(len(m["stragglers"]) for m in metrics),
        "dropped_clients": sum(len(m["dropped_clients"]) for m in metrics),
        "dropped_chunks": sum(m["dropped_chunks"] for m in metrics),
        "retransmitted_chunks": sum(m["retransmitted_chunks"] for m in metrics),
    }


def results_table(summary: dict[str, Any]) -> str:
    fmt = {
        "final_accuracy": lambda v: f"{v:.4f}", "best_accuracy": lambda v: f"{v:.4f}",
        "sim_time_s": lambda v: f"{v:,.1f} s", "wall_time_s": lambda v: f"{v:,.1f} s",
        "bytes_up": human_bytes, "bytes_down": human_bytes,
    }
    rows = [(k, fmt.get(k, str)(v) if v is not None else "-") for k, v in summary.items()]
    return format_table(["metric", "value"], rows)


def _progress(cfg: RunConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.rounds, initial=start, desc=f"simulate {cfg.name}", unit="round", dynamic_ncols=True)


def _to_toml(d: dict[str, Any]) -> str:
    lines = []
    for k, v in d.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {str(v).lower()}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v!r}" if math.isfinite(v) else f"{k} = {0}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(map(str, v))}]")
        else:
            lines.append(f"{k} = {str(v)!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"
