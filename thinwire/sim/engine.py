"""Simulation: many virtual clients on a few Ray worker actors, timed by a virtual clock.

This module is the simulation *transport* of the one round engine (thinwire.server.rounds): per
round, workers execute the selected clients' tasks in batches; for every client the NetworkModel
gives download, compute (with straggling) and upload time and the chunks lost on the way; the
results then reach the engine one by one in virtual-time order, exactly as pushes reach a served
parameter server in wall time. Every result is serialised to bytes, so the bytes counted are the
bytes a real wire would carry.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from typing import Any

import torch

from thinwire import compression
from thinwire.config import RunConfig, to_dict
from thinwire.errors import UserError
from thinwire.faults.network import NetworkModel
from thinwire.rundir import make_dir
from thinwire.server.rounds import Arrival, Lost, RoundEngine, RunResult, results_table, summarize  # noqa: F401
from thinwire.task import Task

from thinwire.sim.store import ClientStateStore
from thinwire.sim.worker import SimWorker

log = logging.getLogger(__name__)


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
            from thinwire.logs import ray_init_kwargs
            kwargs: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, **ray_init_kwargs())
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, **kwargs)
            else:
                # "local": a fresh instance, never a `ray start` cluster that happens to run here
                ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
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
        try:
            return [r for batch in ray.get(futures) for r in batch]
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ValueError):    # a refusal of ours (NaN/Inf update, bad task): one line
                raise UserError(f"a client task failed: {cause}"
                                + ("; the run diverged: lower --lr" if "NaN" in str(cause) else "")) from None
            raise

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        if self.started_ray:
            self._ray.shutdown()


class SimTransport:
    """The round engine's transport in simulation: Ray workers compute, the fault model times."""

    clock = "virtual"
    refusal_is_final = True          # a simulated client does not push again

    def __init__(self, cfg: RunConfig, pool: WorkerPool, segments: tuple[int, ...] | None) -> None:
        self.cfg, self.pool, self.segments = cfg, pool, segments
        self.net = NetworkModel.from_config(cfg)
        self.store = ClientStateStore.for_run(cfg)
        codec = compression.from_spec(cfg.codec)
        self.holes_ok = cfg.loss_policy == "holes" and codec.supports_holes
        if cfg.loss_policy == "holes" and not codec.supports_holes and cfg.loss != "none":
            log.warning("codec %s cannot decode around lost chunks; its uploads are retransmitted", codec.name)
        self._queue: list[Arrival] = []
        self._carry: list[Arrival] = []
        self._now = 0.0
        self._round = 0
        self._io: dict[str, Any] = {}
        self._pending: set[int] = set()

    def candidates(self, rnd: int) -> list[int]:
        return list(range(self.cfg.clients))

    def open_round(self, rnd: int, vec: torch.Tensor, tasks: dict[int, Task]) -> None:
        net = self.net
        self._round, self._now = rnd, 0.0
        down_bytes = compression.get("identity").encode(vec).nbytes
        results = self.pool.run(vec, [(tasks[c].to_dict(), self.store.get(c)) for c in sorted(tasks)])
        io = {"bytes_up": 0, "bytes_down": 0, "payload_up": 0, "payload_down": 0, "dropped_chunks": 0, "retransmitted_chunks": 0,
              "stragglers": [c for c in sorted(tasks) if net.straggler_factor(c, rnd) > 1.0]}
        arrivals = []
        for r in results:
            down = net.download(r.client_id, rnd, down_bytes)
            comp = net.compute_time(r.client_id, rnd, r.work)
            up = (net.upload(r.client_id, rnd, len(r.payload), r.header_size) if self.holes_ok
                  else net.transfer(r.client_id, rnd, len(r.payload), "up", r.header_size, policy="retransmit"))
            self.store.put(r.client_id, r.state)
            holes = net.holes(up)
            io["bytes_up"] += up.wire_bytes
            io["bytes_down"] += down.wire_bytes
            io["payload_up"] += len(r.payload)
            io["payload_down"] += down_bytes
            io["dropped_chunks"] += up.dropped_chunks + down.dropped_chunks  # both ways, as retransmitted_chunks
            io["retransmitted_chunks"] += up.retransmitted_chunks + down.retransmitted_chunks
            arrivals.append(Arrival(client_id=r.client_id, round=r.round, job=r.job, payload=r.payload,
                                    scalars=r.scalars, time=down.time_s + comp + up.time_s, holes=holes))
        self._io = io
        self._pending = set(tasks)
        self._queue = sorted(self._carry + arrivals, key=lambda a: (a.time, a.client_id))
        self._carry = []

    def now(self) -> float:
        return self._now

    def next_event(self, until: float) -> Arrival | Lost | None:
        if self._queue and self._queue[0].time <= until:
            a = self._queue.pop(0)
            self._now = max(self._now, a.time)
            if a.round == self._round:
                self._pending.discard(a.client_id)
            return a
        if math.isinf(until):
            if self._pending:                  # nothing left that could arrive (should not happen)
                return Lost(self._pending.pop())
            return None
        self._now = max(self._now, until)
        return None

    def close_round(self, rnd: int, keep_late: bool) -> dict[str, Any]:
        """The round's I/O: every selected client downloaded and uploaded (late ones too)."""
        late = [a for a in self._queue if a.round == rnd]
        if keep_late:                          # delayed jobs: they keep arriving in the next round
            self._carry = [replace(a, time=a.time - self._now) for a in late]
        self._queue = []
        return dict(self._io)

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state.get("store", {}))


def simulate(cfg: RunConfig, *, resume: bool = False, pool: WorkerPool | None = None, data=None) -> RunResult:
    """Run a federated simulation; returns the per-round metrics (also in RUN_DIR/metrics.jsonl).
    `data` (a FederatedDataset) replaces the configured data set, e.g. a user's own."""
    from thinwire.data.datasets import dataset_from_config
    from thinwire.training import build_run_model

    cfg.validate()
    own_pool = pool is None
    pool = pool or WorkerPool(cfg)
    try:
        run_dir = make_dir("out_dir", cfg.run_dir)
        data = data if data is not None else dataset_from_config(cfg)
        init_vec, evaluator, segments = build_run_model(cfg, data)
        summary_text = data.summary()
        (run_dir / "partition.txt").write_text(summary_text + "\n")
        if cfg.progress:
            print(summary_text, flush=True)
        transport = SimTransport(cfg, pool, segments)
        engine = RoundEngine(cfg, transport, init_vec, evaluator=evaluator, resume=resume)
        if engine.resumed_from is not None:
            print(f"resumed {run_dir} from round {engine.resumed_from}", flush=True)
        pool.load(data)
        return engine.run(progress=cfg.progress, desc="simulate")
    finally:
        if own_pool:
            pool.close()


__all__ = ["simulate", "SimTransport", "WorkerPool", "RunResult", "results_table", "summarize"]
