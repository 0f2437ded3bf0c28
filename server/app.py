"""The served parameter server: the gRPC-facing state of a served run, and the round engine's
transport on the wall clock.

The round loop itself is thinwire.server.rounds (the same one `thinwire simulate` runs). A
`ParameterServer` is composed of what only a served run has: the live client registry
(`membership`), the round ledger here (the open round, the task each selected client fetches, who
was answered, the model download cache) and push ingest (`ingest`: admission, reassembly within a
byte budget, hand-over to the engine).

Exactly-once: the checkpoint written after a round is finalized holds the model, the strategy and
the accepted (round, client) history. A crash mid-round loses only that round's partial sum; on
`--resume` the round is redone from the checkpoint and clients re-fetch their task. Within a
round, pushes are idempotent per (round, client, job).

Asynchronous strategies (FedBuff) keep clients in flight across server steps: such a client may
fetch its task and that step's model after the step closed (the broadcast of every step with work
in flight is kept), and its push is queued for the next step instead of being answered late.

One job, the served run's state as the round engine's transport, kept in one module although it
runs past 420 lines: the round ledger, task hand-out and model cache are read under one lock by
the gRPC handlers and written by the engine's transport methods, so splitting them would spread
one lock's invariants over several files.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from thinwire import compression
from thinwire.config import RunConfig, to_dict
from thinwire.faults.network import NetworkModel
from thinwire.rundir import make_dir
from thinwire.task import Task
from thinwire.wire.reassembly import BufferBudget, Reassembly
from thinwire.wire.format import ByteCounter, WireError, sha256

from thinwire.server.ingest import PushIngest
from thinwire.server.membership import Membership
from thinwire.server.rounds import ACCEPTED_LOG, Arrival, Lost, RoundEngine
from thinwire.server.strategy import make_strategy

log = logging.getLogger("thinwire.server")


@dataclass
class ServeOptions:
    """Settings of the served process that are not part of the federated run itself."""
    host: str = "127.0.0.1"
    port: int = 50051                   # 0 = any free port (read it back with --port-file)
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0      # a client silent this long is gone (its round slot freed)
    join_wait: float = 30.0             # wait this long for ceil(K*overcommit) live clients, then take what is there
    max_update_bytes: int = 0           # per push; 0 = the strategy's bound, else 4 x the fp32 model + 1 MiB
    buffer_budget: int = 0              # reassembly bytes across pushes in flight; 0 = max(32 MiB, 2 fp32 pushes)
    push_wait: float = 60.0             # how long a push waits for buffer budget before UNAVAILABLE
    emulate: bool = False               # apply the run's fault model on every client link
    time_scale: float = 1.0             # multiplies emulated delays and the round deadline
    threads: int = 64
    linger: float = 5.0                 # keep answering FINISHED this long after the last round
    checkpoint: bool = True


@dataclass
class RoundState:
    round: int
    selected: list[int]
    started: float
    tasks: dict[int, Task]
    accepted: list[int] = field(default_factory=list)
    open: bool = True
    dropped_chunks: int = 0
    retransmitted_chunks: int = 0
    rejected: int = 0
    lost_reported: set[int] = field(default_factory=set)


ARRIVAL_ORDER_ENV = "THINWIRE_ARRIVAL_ORDER"


def arrival_order_from_env() -> list[tuple[int, int]]:
    """(client, round) pairs of THINWIRE_ARRIVAL_ORDER ("3:0,1:0,..."); empty when unset."""
    value = os.environ.get(ARRIVAL_ORDER_ENV, "")
    try:
        return [(int(c), int(r)) for c, r in (item.split(":") for item in value.split(",") if item.strip())]
    except ValueError:
        raise ValueError(f"{ARRIVAL_ORDER_ENV}={value!r}; allowed: client:round pairs, comma-separated") from None


class ParameterServer:
    """State of one served run; the gRPC servicer calls into it, the round engine drives it."""

    clock = "wall"
    refusal_is_final = False             # a refused client may push again (e.g. after a transient error)

    def __init__(self, cfg: RunConfig, opts: ServeOptions, *, resume: bool = False,
                 init_vec: torch.Tensor | None = None, evaluator: Callable[[torch.Tensor], tuple[float, float]] | None = None,
                 segments: tuple[int, ...] | None = None) -> None:
        self.cfg, self.opts = cfg, opts
        self.run_dir = make_dir("out_dir", cfg.run_dir)
        if init_vec is None:
            from thinwire.data.datasets import dataset_from_config
            from thinwire.training import build_run_model
            init_vec, evaluator, segments = build_run_model(cfg, dataset_from_config(cfg))
        self.segments = segments
        self.numel = init_vec.numel()
        self.net = NetworkModel.from_config(cfg)
        self.codec = compression.from_spec(cfg.codec)
        model_bytes = 4 * self.numel
        strategy = make_strategy(cfg)
        # Default per-push limit: the strategy's bound on one result (e.g. NTK-FL's Jacobians, ~N_m x
        # d_2 x the model) or, for model-sized deltas, 4 x the fp32 model + 1 MiB; --max-update-mb wins.
        bound = strategy.max_result_bytes(self.numel)
        max_update_bytes = opts.max_update_bytes or (int(bound) if bound else 4 * model_bytes + (1 << 20))
        # Default: two full-precision pushes (with their per-push overhead), so one is received
        # while the other is checked and folded into the sum.
        push = Reassembly.charge(max(model_bytes, int(bound or 0)) + (1 << 16), cfg.chunk_size)
        budget = BufferBudget(opts.buffer_budget or max(32 << 20, 2 * push))
        self.up, self.down = ByteCounter(), ByteCounter()
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)
        self.members = Membership(cfg.clients, opts.heartbeat_timeout, self.cv)
        self.ingest = PushIngest(self, max_update_bytes=max_update_bytes, budget=budget, push_wait=opts.push_wait,
                                 holes_ok=cfg.loss_policy == "holes" and self.codec.supports_holes)
        self.answered: dict[tuple[int, int], str] = {}   # (round, client) -> accepted / late
        self.round_state: RoundState | None = None
        self.events: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.finished = False
        self.rejected = 0
        self._blobs: dict[tuple[int, str], tuple[bytes, int, bytes]] = {}
        self._io0: tuple[dict[str, int], dict[str, int]] | None = None
        # Asynchronous strategies: the broadcast of each step some client still trains on (it may
        # fetch its task and model after that step closed). At most one per step with work in flight.
        self._versions: dict[int, torch.Tensor] = {}
        # Test hook (the arrival order is the one thing that differs between served and simulated
        # runs): THINWIRE_ARRIVAL_ORDER="client:round,..." hands results to the engine in that order.
        self._order = arrival_order_from_env()
        self._held: dict[tuple[int, int], Arrival] = {}
        self.session = None                   # secure aggregation: the open round's SecAggSession
        self.engine = RoundEngine(cfg, self, init_vec, evaluator=evaluator, strategy=strategy, resume=resume,
                                  checkpoints=opts.checkpoint, should_stop=self.stop_event.is_set)
        self.rounds_done = self.engine.rounds_done
        self._broadcast = self.engine.global_vec
        self.finished = self.engine.finished
        if resume and self.engine.resumed_from is not None:
            log.info("resumed %s from round %d", self.run_dir, self.engine.resumed_from)

    # -- what the engine owns, seen from here -----------------------------------------------------
    @property
    def global_vec(self) -> torch.Tensor:
        return self.engine.global_vec

    @global_vec.setter
    def global_vec(self, vec: torch.Tensor) -> None:
        with self.lock:
            self.engine.global_vec = vec
            self._broadcast = vec
            self._blobs.clear()

    @property
    def strategy(self):
        return self.engine.strategy

    @property
    def policy(self):
        return self.engine.policy

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.engine.history

    @property
    def last_eval(self) -> tuple[float, float]:
        return self.engine.last_eval

    @property
    def current_round(self) -> int:
        return self.round_state.round if self.round_state is not None else self.rounds_done

    def run_rounds(self, progress: bool = False) -> None:
        """Drive rounds until done or stopped (the engine's loop; runs in its own thread)."""
        try:
            self.engine.run(progress=progress, desc="serve")
        finally:
            with self.cv:
                self.rounds_done = self.engine.rounds_done
                self.round_state = None
                if self.engine.finished:
                    self.finished = True
                self.cv.notify_all()
            while True:                       # async strategies leave pushes queued across steps: the run is over
                try:
                    self.events.get_nowait().answer("late", "the run finished before this update was taken")
                except queue.Empty:
                    break
            held, self._held = list(self._held.values()), {}
            for ev in held:                   # THINWIRE_ARRIVAL_ORDER: results still waiting for their turn
                ev.answer("late", "the run finished before this update was taken")

    # -- model ----------------------------------------------------------------------------------
    def model_blob(self, version: int, codec_spec: str) -> tuple[bytes, int, bytes, int]:
        """(Encoded bytes, header size, body sha256, version) of the round's broadcast model;
        cached, so all downloads of one version share one copy."""
        with self.lock:
            if version not in (-1, self.rounds_done) and version not in self._versions:
                raise WireError("FAILED_PRECONDITION",
                                f"model version {version} is not available (current version {self.rounds_done})")
            version = self.rounds_done if version == -1 else version
            key = (version, codec_spec or "identity")
            hit = self._blobs.get(key)
            if hit is not None:
                return (*hit, version)
            vec = self._broadcast if version == self.rounds_done else self._versions[version]
        try:
            codec = compression.from_spec(codec_spec or "identity")
        except ValueError as e:
            raise WireError("INVALID_ARGUMENT", f"download codec: {e}") from None
        segments = self.segments if vec.numel() == self.numel else None
        ctx = compression.Context(seed=self.cfg.seed, round=version, client_id=0, segments=segments, shared=True)
        enc = codec.encode(vec, ctx)
        blob = enc.to_bytes()
        entry = (blob, enc.header_size, sha256(memoryview(blob)[enc.header_size:]))
        with self.lock:
            if version == self.rounds_done:
                if len(self._blobs) >= 4:
                    self._blobs.clear()
                self._blobs[key] = entry
        return (*entry, version)

    def tasks_for_many(self, ids: list[int]) -> tuple[list[int], list[tuple[int, tuple]], bool]:
        """A task poll of many clients (also their heartbeat): (unknown ids, [(id, (RoundState,
        Task, seconds left))] for the ids that have a task now, finished)."""
        unknown = self.members.touch_many(ids)
        with self.lock:
            if self.finished:
                return unknown, [], True
            rs = self.round_state
            if rs is None or not rs.open:
                return unknown, [], False
            left = 0.0
            if self.cfg.deadline > 0:
                left = max(0.0, self.deadline_s - (time.monotonic() - rs.started))
            skip = set(unknown)
            tasks = [(cid, (rs, rs.tasks[cid], left)) for cid in ids
                     if cid in rs.tasks and cid not in skip and (rs.round, cid) not in self.answered]
            if self.engine.strategy.spans_steps:
                flying = self.engine.strategy.in_flight()
                tasks += [(cid, (*due, left)) for cid in ids if cid in flying and cid not in rs.tasks and cid not in skip
                          for due in [self._due_task(rs, cid, flying)] if due is not None]
        return unknown, tasks, False

    def task_for(self, cid: int) -> tuple[str, Any]:
        """('train', (RoundState, Task, seconds left)) / ('wait', reason) / ('finished', None)."""
        with self.lock:
            if self.finished:
                return "finished", None
            rs = self.round_state
            if rs is None or not rs.open:
                return "wait", f"no round open (next round {self.current_round})"
            due = self._due_task(rs, cid) if self.engine.strategy.spans_steps and cid not in rs.tasks else None
            if due is not None:
                return "train", (*due, 0.0)
            if cid not in rs.tasks:
                return "wait", f"client {cid} not selected for round {rs.round}"
            if (rs.round, cid) in self.answered:
                return "wait", f"update for round {rs.round} already received"
            left = 0.0
            if self.cfg.deadline > 0:
                left = max(0.0, self.deadline_s - (time.monotonic() - rs.started))
            return "train", (rs, rs.tasks[cid], left)

    def _due_task(self, rs: RoundState, cid: int, flying: dict[int, int] | None = None) -> tuple[RoundState, Task] | None:
        """Asynchronous strategies: the task `cid` got in an earlier step and has not delivered yet
        (it may fetch it after that step closed, or again after a push that did not count), with a
        round state of that step. Caller holds the lock."""
        r = (flying if flying is not None else self.engine.strategy.in_flight()).get(cid)
        if r is None or r >= rs.round or (r, cid) in self.answered or (r, cid) in self.ingest.busy:
            return None
        task = self.engine.tasks_by_round.get(r, {}).get(cid)
        return None if task is None else (RoundState(r, [cid], rs.started, {cid: task}), task)

    @property
    def deadline_s(self) -> float:
        return self.cfg.deadline * self.opts.time_scale

    # -- the engine's transport -----------------------------------------------------------------
    def candidates(self, rnd: int) -> list[int] | None:
        """Live clients to select from, once enough have joined (or `join_wait` passed)."""
        with self.cv:
            self.rounds_done = rnd
            self.round_state = None
            self._broadcast = self.engine.global_vec
            self._blobs.clear()
            spans = self.engine.strategy.spans_steps
            for key in [k for k in self.answered if k[0] < rnd - self.engine.strategy.max_delay
                        or (spans and k[0] < rnd - 1 and k[0] not in self.engine.tasks_by_round)]:
                del self.answered[key]
            for r in [r for r in self._versions if r not in self.engine.tasks_by_round]:
                del self._versions[r]
            self.cv.notify_all()
        need = self.engine.policy.n_select
        t_end = time.monotonic() + self.opts.join_wait
        with self.cv:
            while not self.stop_event.is_set():
                alive = self.members.alive()
                if len(alive) >= need:
                    return alive
                if time.monotonic() >= t_end and len(alive) >= self.engine.policy.min_clients:
                    log.warning("round %d: only %d of %d wanted clients are alive; selecting them", rnd, len(alive), need)
                    return alive
                self.cv.wait(0.1)
        return None

    def open_round(self, rnd: int, vec: torch.Tensor, tasks: dict[int, Task]) -> None:
        with self.cv:
            self._broadcast = vec.detach().float().reshape(-1)
            self._blobs.clear()
            if self.engine.strategy.spans_steps:
                self._versions[rnd] = self._broadcast
            self._io0 = (self.up.snapshot(), self.down.snapshot())
            self.round_state = RoundState(rnd, sorted(tasks), time.monotonic(), tasks)
            self.cv.notify_all()

    def open_session(self, rnd: int, session) -> None:
        with self.cv:
            self.session = session

    def finish_session(self, rnd: int, session) -> float:
        """Wait for secure aggregation's unmask step: every survivor revealed its shares, left, or
        stayed silent past the session's timeout. Returns the round time it took."""
        t0 = time.monotonic()
        while not session.done and not self.stop_event.is_set():
            now = time.monotonic()
            for c in sorted(session.expected):
                if not self.members.is_alive(c, now):
                    session.drop(c)
            session.tick()
            session.wait(0.05)
        with self.cv:
            self.session = None
        return (time.monotonic() - t0) / max(self.opts.time_scale, 1e-12)

    def now(self) -> float:
        """Round time in the policy's units: wall seconds divided by the time scale."""
        rs = self.round_state
        return 0.0 if rs is None else (time.monotonic() - rs.started) / max(self.opts.time_scale, 1e-12)

    def next_event(self, until: float) -> Arrival | Lost | None:
        """The next arrival or lost client, waiting at most until round time `until`."""
        rs = self.round_state
        while not self.stop_event.is_set():
            if self.session is not None:      # secure aggregation: key steps that waited too long go on
                self.session.tick()
            lost = self._newly_lost(rs)
            if lost is not None:
                return Lost(lost)
            left = (until - self.now()) * self.opts.time_scale
            if left <= 0:
                return None
            if self._order:                   # test hook: the next arrival of the fixed order, once it is here
                held = self._held.pop(self._order[0], None)
                if held is not None:
                    self._order.pop(0)
                    return held
            try:
                ev = self.events.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            key = (ev.client_id, ev.round)
            if self._order and key != self._order[0] and key in self._order:
                self._held[key] = ev          # its turn comes later
                continue
            if self._order and key == self._order[0]:
                self._order.pop(0)
            return ev
        return None

    def _newly_lost(self, rs: RoundState | None) -> int | None:
        """A selected client that is gone (silent past the heartbeat timeout or left) with no push
        in progress and no answer yet: it no longer holds the round open."""
        if rs is None:
            return None
        now = time.monotonic()
        with self.lock:                       # only the selected clients: cost flat in idle clients
            due = [(rs.round, c) for c in rs.selected]
            if self.engine.strategy.spans_steps:   # and those still working on a task of an earlier step
                due += [(r, c) for c, r in self.engine.strategy.in_flight().items() if r < rs.round]
            for r, c in due:
                if (not self.members.is_alive(c, now) and (r, c) not in self.ingest.busy and (r, c) not in self.answered
                        and c not in rs.lost_reported):
                    rs.lost_reported.add(c)
                    return c
        return None

    def close_round(self, rnd: int, keep_late: bool) -> dict[str, Any]:
        """Stop taking this round's results (queued ones are late); the round's I/O figures."""
        with self.cv:
            rs = self.round_state
            if rs is not None:
                rs.open = False
            self.cv.notify_all()
        spans = self.engine.strategy.spans_steps
        while not spans:                      # pushes that raced the close: late (async: the next step takes them)
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            ev.answer("late", "the round closed before this update was taken")
        self.ingest.budget.clear_pool()       # idle until the next round; finalize needs the room
        for r in ([rnd] if not spans else {k[0] for k in self.ingest.partial if k[0] not in self.engine.tasks_by_round}):
            self.ingest.drop_round(r)
        held = self.ingest.budget.snapshot()  # after this round's partial buffers were dropped
        up0, down0 = self._io0 or (self.up.snapshot(), self.down.snapshot())
        up1, down1 = self.up.snapshot(), self.down.snapshot()
        rs = rs or RoundState(rnd, [], 0.0, {})
        return {
            "bytes_up": up1["wire_bytes"] - up0["wire_bytes"],
            "bytes_down": down1["wire_bytes"] - down0["wire_bytes"],
            "payload_up": up1["payload_bytes"] - up0["payload_bytes"],
            "payload_down": down1["payload_bytes"] - down0["payload_bytes"],
            "dropped_chunks": rs.dropped_chunks,
            "retransmitted_chunks": rs.retransmitted_chunks,
            "rejected_pushes": rs.rejected,
            "stragglers": [c for c in rs.selected if self.net.straggler_factor(c, rnd) > 1.0] if self.opts.emulate else [],
            "reassembly_bytes": held["reassembly_bytes"],
            "reassembly_buffers": held["reassembly_buffers"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {}                             # served clients keep their own state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        with self.lock:
            rs = self.round_state
            up, down = self.up.snapshot(), self.down.snapshot()
            return {
                "run_name": self.cfg.name, "round": self.current_round, "rounds_total": self.cfg.rounds,
                "phase": "finished" if self.finished else ("training" if rs is not None and rs.open else "waiting"),
                "model_version": self.rounds_done, "clients_joined": len(self.members),
                "clients_alive": len(self.members.alive()), "selected": list(rs.selected) if rs else [],
                "accepted": list(rs.accepted) if rs else [], "bytes_up_payload": up["payload_bytes"],
                "bytes_up_wire": up["wire_bytes"], "bytes_down_payload": down["payload_bytes"],
                "bytes_down_wire": down["wire_bytes"], "accuracy": self.last_eval[0], "loss": self.last_eval[1],
                "finished": self.finished, "rejected_pushes": self.rejected,
            }

    def config_json(self) -> str:
        return json.dumps(to_dict(self.cfg))


__all__ = ["ParameterServer", "ServeOptions", "RoundState", "ACCEPTED_LOG"]
