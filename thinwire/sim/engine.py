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
from thinwire.server.rounds import Arrival, Lost, RoundEngine, RunResult, load_resume_checkpoint, results_table, summarize  # noqa: F401
from thinwire.task import Task

from thinwire.sim.store import ClientStateStore
from thinwire.sim.worker import SimWorker

log = logging.getLogger(__name__)


# A worker actor that dies (kill -9, OOM) loses its batch; it is rerun on a replacement actor.
MAX_TASK_ATTEMPTS = 3          # a client task on which this many actors died ends the run (it kills them)
MAX_RESTARTS_PER_ROUND = 8     # deaths within one round that end the run (at least one per actor)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = next((ln for ln in lines if "died" in ln or "exit" in ln.lower()), lines[0] if lines else type(e).__name__)
    return line if len(line) <= 160 else line[:157] + "..."


def _job_name(job: tuple[dict, Any]) -> str:
    task = job[0]
    return f"client {task.get('client_id')} in round {task.get('round')}"


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
        self._remote = ray.remote(SimWorker).options(**opts)
        self._cfg_dict = to_dict(cfg)
        self._data_ref = None
        self.actors = [self._remote.remote(self._cfg_dict) for _ in range(n)]
        self.restarts = 0                     # dead actors replaced over the run

    def load(self, data) -> None:
        """Give every actor the driver's data set (one object-store copy) and wait until ready."""
        self._data_ref = self._ray.put(data)
        self._ray.get([a.load.remote(self._data_ref) for a in self.actors])

    def run(self, global_vec: torch.Tensor, jobs: list[tuple[dict, Any]]) -> list:
        """Execute the jobs, one batch per actor; results in job order (batch by batch).

        A batch whose actor died (kill -9, OOM) is rerun on a replacement actor, its jobs one by
        one so that a job that kills every actor it runs on is found: after MAX_TASK_ATTEMPTS
        deaths running one job, or MAX_RESTARTS_PER_ROUND deaths in one call, the run ends with a
        one-line UserError naming the client and round. Jobs are (task, state) copies: the store is
        only written from the results, after every job succeeded, so a lost batch changes nothing."""
        ray = self._ray
        ref = ray.put(global_vec)
        n = len(self.actors)
        order = [i for slot in range(n) for i in range(slot, len(jobs), n)]     # = jobs[0::n] + jobs[1::n] + ...
        results: list[Any] = [None] * len(jobs)
        attempts = [0] * len(jobs)
        pending = {self._submit(slot, ref, [jobs[i] for i in idx]): (slot, idx)
                   for slot in range(n) if (idx := list(range(slot, len(jobs), n)))}
        deaths = 0
        while pending:
            (fut,), _ = ray.wait(list(pending), num_returns=1)
            slot, idx = pending.pop(fut)
            try:
                for i, r in zip(idx, ray.get(fut)):
                    results[i] = r
                continue
            except ray.exceptions.RayActorError as e:
                reason = _first_line(e)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, ValueError):    # a refusal of ours (NaN/Inf update, bad task): one line
                    raise UserError(f"a client task failed: {cause}"
                                    + ("; the run diverged: lower --lr" if "NaN" in str(cause) else "")) from None
                raise
            deaths += 1
            for i in idx:
                attempts[i] += 1
            worst = max(idx, key=lambda i: attempts[i])
            who = _job_name(jobs[worst])
            if attempts[worst] >= MAX_TASK_ATTEMPTS or deaths > max(MAX_RESTARTS_PER_ROUND, n):
                why = (f"{attempts[worst]} worker actors died running it" if attempts[worst] >= MAX_TASK_ATTEMPTS
                       else f"{deaths} worker actors died in this round")
                raise UserError(f"simulation worker lost: {who}: {why} (last: {reason}); giving up") from None
            log.warning("worker actor %d died running %s (%s); rerunning on a replacement actor",
                        slot, ", ".join(_job_name(jobs[i]) for i in idx), reason)
            self._replace(slot)
            for k, i in enumerate(idx):                      # one job per call: a repeat death names its job
                s = (slot + k) % n
                pending[self._submit(s, ref, [jobs[i]])] = (s, [i])
        return [results[i] for i in order]

    def _submit(self, slot: int, ref, batch: list) -> Any:
        return self.actors[slot].run.remote(ref, batch)

    def _replace(self, slot: int) -> None:
        """A fresh actor in `slot` (its tasks queue behind its data load); the dead one is released."""
        try:
            self._ray.kill(self.actors[slot])
        except Exception:                   # already gone
            pass
        actor = self._remote.remote(self._cfg_dict)
        if self._data_ref is not None:
            actor.load.remote(self._data_ref)
        self.actors[slot] = actor
        self.restarts += 1

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
        # A client's new state (error-feedback residual) is its own once its result is delivered (or
        # dropped as late): until then it is kept here, so a checkpoint never holds the residual of
        # work still in flight (asynchronous strategies redo that work after a resume).
        self._unsettled: dict[int, tuple[int, Any]] = {}     # client -> (round, state) of its latest task
        self._session = None                                  # secure aggregation: the round's session
        self._secagg = None                                   # ... and its clients' side (thinwire.secagg)

    def candidates(self, rnd: int) -> list[int]:
        return list(range(self.cfg.clients))

    def open_session(self, rnd: int, session) -> None:
        self._session = session

    def finish_session(self, rnd: int, session) -> float:
        """Secure aggregation's unmask step for the survivors; its round trip's (virtual) seconds."""
        clients, self._secagg, self._session = self._secagg, None, None
        if clients is None:
            return 0.0
        clients.unmask()
        return clients.unmask_time

    def _link_time(self, cid: int, up: int, down: int) -> float:
        """A small request and its reply on client `cid`'s emulated link (no chunk loss)."""
        return self.net.message_time(cid, up, "up") + self.net.message_time(cid, down, "down")

    def open_round(self, rnd: int, vec: torch.Tensor, tasks: dict[int, Task]) -> None:
        net = self.net
        self._round, self._now = rnd, 0.0
        down_bytes = compression.get("identity").encode(vec).nbytes
        results = self.pool.run(vec, [(tasks[c].to_dict(), self._state_of(c)) for c in sorted(tasks)])
        if self._session is not None:        # secure aggregation: keys first, then only masked inputs leave
            from thinwire.secagg.simulated import SimulatedClients
            self._secagg = SimulatedClients(self._session, rnd, self._link_time)
            results = [self._secagg.masked(r) for r in results if r.client_id in self._secagg.inboxes]
        io = {"bytes_up": 0, "bytes_down": 0, "payload_up": 0, "payload_down": 0, "dropped_chunks": 0, "retransmitted_chunks": 0,
              "stragglers": [c for c in sorted(tasks) if net.straggler_factor(c, rnd) > 1.0]}
        arrivals = []
        for r in results:
            down = net.download(r.client_id, rnd, down_bytes)
            comp = net.compute_time(r.client_id, rnd, r.work)
            up = (net.upload(r.client_id, rnd, len(r.payload), r.header_size) if self.holes_ok
                  else net.transfer(r.client_id, rnd, len(r.payload), "up", r.header_size, policy="retransmit"))
            self._unsettled[r.client_id] = (r.round, r.state)
            holes = net.holes(up)
            io["bytes_up"] += up.wire_bytes
            io["bytes_down"] += down.wire_bytes
            io["payload_up"] += len(r.payload)
            io["payload_down"] += down_bytes
            io["dropped_chunks"] += up.dropped_chunks + down.dropped_chunks  # both ways, as retransmitted_chunks
            io["retransmitted_chunks"] += up.retransmitted_chunks + down.retransmitted_chunks
            keys = self._secagg.key_time.get(r.client_id, 0.0) if self._secagg is not None else 0.0
            arrivals.append(Arrival(client_id=r.client_id, round=r.round, job=r.job, payload=r.payload,
                                    scalars=r.scalars, time=down.time_s + keys + comp + up.time_s, holes=holes))
        self._io = io
        self._pending = set(tasks) | {a.client_id for a in self._carry}
        self._queue = sorted(self._carry + arrivals, key=lambda a: (a.time, a.client_id))
        self._carry = []

    def now(self) -> float:
        return self._now

    def next_event(self, until: float) -> Arrival | Lost | None:
        if self._queue and self._queue[0].time <= until:
            a = self._queue.pop(0)
            self._now = max(self._now, a.time)
            self._pending.discard(a.client_id)
            self._settle(a)
            return a
        if math.isinf(until):
            if self._pending:                  # nothing left that could arrive (should not happen)
                return Lost(self._pending.pop())
            return None
        self._now = max(self._now, until)
        return None

    def close_round(self, rnd: int, keep_late: bool) -> dict[str, Any]:
        """The round's I/O: every selected client downloaded and uploaded (late ones too)."""
        if keep_late:                          # delayed jobs / async work: they keep arriving in the next round
            self._carry = [replace(a, time=a.time - self._now) for a in self._queue]
        else:
            for a in self._queue:
                self._settle(a)
        self._queue = []
        return dict(self._io)

    def _state_of(self, cid: int):
        pending = self._unsettled.get(cid)
        return pending[1] if pending is not None else self.store.get(cid)

    def _settle(self, a: Arrival) -> None:
        """The client's state after the task of `a` becomes its own (unless a later task replaced it)."""
        pending = self._unsettled.get(a.client_id)
        if pending is not None and pending[0] == a.round:
            self.store.put(a.client_id, pending[1])
            del self._unsettled[a.client_id]

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
    if resume:   # a broken or foreign checkpoint fails here: before Ray starts, before any file is written
        load_resume_checkpoint(cfg.run_dir, cfg, "simulate")
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
        # The driver folds updates while the worker actors hold the cores: with torch's default
        # intra-op threads each fold waits for descheduled helper threads (measured in
        # docs/BENCHMARKS.md, zoo-scale: 0.67 s vs 0.03 s of driver time per round at d = 0.27M).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return engine.run(progress=cfg.progress, desc="simulate")
        finally:
            torch.set_num_threads(threads)
    finally:
        if own_pool:
            pool.close()


__all__ = ["simulate", "SimTransport", "WorkerPool", "RunResult", "results_table", "summarize"]
