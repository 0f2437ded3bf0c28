"""The served parameter server: the gRPC-facing state of a served run, and the round engine's
transport on the wall clock.

The round loop itself is thinwire.server.rounds (the same one `thinwire simulate` runs). This
module keeps what only a served run has: the live client registry (joins, heartbeats), the task
each selected client fetches, the model download cache, and pushes: a push is admitted against
the open round, reassembled chunk by chunk within a byte budget, verified, then handed to the
engine as an `Arrival`; the pushing gRPC thread waits for the engine's verdict (accepted, late,
refused) before it answers, and only then recycles the buffer (decoding may be zero-copy).

Exactly-once: the checkpoint written after a round is finalized holds the model, the strategy and
the accepted (round, client) history. A crash mid-round loses only that round's partial sum; on
`--resume` the round is redone from the checkpoint and clients re-fetch their task. Within a
round, pushes are idempotent per (round, client, job).
"""
from __future__ import annotations

import json
import logging
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
from thinwire.task import Task, result_header
from thinwire.wire.reassembly import BufferBudget, Reassembly
from thinwire.wire.format import ByteCounter, WireError, sha256

from thinwire.server.rounds import ACCEPTED_LOG, Arrival, Lost, RoundEngine
from thinwire.server.strategy import make_strategy

log = logging.getLogger("thinwire.server")
VERDICT_WAIT = 0.25          # how often a pushing thread waiting for the engine checks for a stop


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


@dataclass
class ClientInfo:
    last_seen: float
    hostname: str = ""
    left: bool = False


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
        self.holes_ok = cfg.loss_policy == "holes" and self.codec.supports_holes
        model_bytes = 4 * self.numel
        strategy = make_strategy(cfg)
        # Default per-push limit: the strategy's bound on one result (e.g. NTK-FL's Jacobians, ~N_m x
        # d_2 x the model) or, for model-sized deltas, 4 x the fp32 model + 1 MiB; --max-update-mb wins.
        bound = strategy.max_result_bytes(self.numel)
        self.max_update_bytes = opts.max_update_bytes or (int(bound) if bound else 4 * model_bytes + (1 << 20))
        # Default: two full-precision pushes (with their per-push overhead), so one is received
        # while the other is checked and folded into the sum.
        push = Reassembly.charge(max(model_bytes, int(bound or 0)) + (1 << 16), cfg.chunk_size)
        self.budget = BufferBudget(opts.buffer_budget or max(32 << 20, 2 * push))
        self.up, self.down = ByteCounter(), ByteCounter()
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)
        self.clients: dict[int, ClientInfo] = {}
        self.partial: dict[tuple[int, int], Reassembly] = {}
        self.busy: set[tuple[int, int]] = set()
        self.answered: dict[tuple[int, int], str] = {}   # (round, client) -> accepted / late
        self.round_state: RoundState | None = None
        self.events: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.finished = False
        self.rejected = 0
        self._blobs: dict[tuple[int, str], tuple[bytes, int, bytes]] = {}
        self._io0: tuple[dict[str, int], dict[str, int]] | None = None
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

    # -- model ----------------------------------------------------------------------------------
    def model_blob(self, version: int, codec_spec: str) -> tuple[bytes, int, bytes, int]:
        """(Encoded bytes, header size, body sha256, version) of the round's broadcast model;
        cached, so all downloads of one version share one copy."""
        with self.lock:
            if version not in (-1, self.rounds_done):
                raise WireError("FAILED_PRECONDITION",
                                f"model version {version} is not available (current version {self.rounds_done})")
            version = self.rounds_done
            key = (version, codec_spec or "identity")
            hit = self._blobs.get(key)
            if hit is not None:
                return (*hit, version)
            vec = self._broadcast
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

    # -- clients --------------------------------------------------------------------------------
    def check_client(self, cid: int) -> None:
        if cid < 0 or cid >= self.cfg.clients:
            raise WireError("INVALID_ARGUMENT", f"client id {cid} out of range 0..{self.cfg.clients - 1}")

    def join(self, cid: int, hostname: str) -> None:
        self.check_client(cid)
        with self.cv:
            self.clients[cid] = ClientInfo(time.monotonic(), hostname)
            self.cv.notify_all()
        log.info("client %d joined from %s", cid, hostname or "?")

    def touch(self, cid: int) -> bool:
        with self.lock:
            info = self.clients.get(cid)
            if info is None or info.left:
                return False
            info.last_seen = time.monotonic()
            return True

    def touch_many(self, ids: list[int]) -> list[int]:
        """Heartbeat of many clients at once (one lock, one clock read); returns the unknown ids."""
        now = time.monotonic()
        unknown = []
        with self.lock:
            clients = self.clients
            for cid in ids:
                info = clients.get(cid)
                if info is None or info.left:
                    unknown.append(cid)
                else:
                    info.last_seen = now
        return unknown

    def tasks_for_many(self, ids: list[int]) -> tuple[list[int], list[tuple[int, tuple]], bool]:
        """A task poll of many clients (also their heartbeat): (unknown ids, [(id, (RoundState,
        Task, seconds left))] for the ids that have a task now, finished)."""
        unknown = self.touch_many(ids)
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
        return unknown, tasks, False

    def is_alive(self, cid: int, now: float) -> bool:
        info = self.clients.get(cid)
        return info is not None and not info.left and now - info.last_seen <= self.opts.heartbeat_timeout

    def leave(self, cid: int) -> None:
        with self.cv:
            info = self.clients.get(cid)
            if info is not None:
                info.left = True
            self.cv.notify_all()

    def alive(self) -> list[int]:
        now = time.monotonic()
        with self.lock:
            return sorted(c for c, i in self.clients.items()
                          if not i.left and now - i.last_seen <= self.opts.heartbeat_timeout)

    def task_for(self, cid: int) -> tuple[str, Any]:
        """('train', (RoundState, Task, seconds left)) / ('wait', reason) / ('finished', None)."""
        with self.lock:
            if self.finished:
                return "finished", None
            rs = self.round_state
            if rs is None or not rs.open:
                return "wait", f"no round open (next round {self.current_round})"
            if cid not in rs.tasks:
                return "wait", f"client {cid} not selected for round {rs.round}"
            if (rs.round, cid) in self.answered:
                return "wait", f"update for round {rs.round} already received"
            left = 0.0
            if self.cfg.deadline > 0:
                left = max(0.0, self.deadline_s - (time.monotonic() - rs.started))
            return "train", (rs, rs.tasks[cid], left)

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
            for key in [k for k in self.answered if k[0] < rnd - self.engine.strategy.max_delay]:
                del self.answered[key]
            self.cv.notify_all()
        need = self.engine.policy.n_select
        t_end = time.monotonic() + self.opts.join_wait
        with self.cv:
            while not self.stop_event.is_set():
                alive = self.alive()
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
            self._io0 = (self.up.snapshot(), self.down.snapshot())
            self.round_state = RoundState(rnd, sorted(tasks), time.monotonic(), tasks)
            self.cv.notify_all()

    def now(self) -> float:
        """Round time in the policy's units: wall seconds divided by the time scale."""
        rs = self.round_state
        return 0.0 if rs is None else (time.monotonic() - rs.started) / max(self.opts.time_scale, 1e-12)

    def next_event(self, until: float) -> Arrival | Lost | None:
        """The next arrival or lost client, waiting at most until round time `until`."""
        rs = self.round_state
        while not self.stop_event.is_set():
            lost = self._newly_lost(rs)
            if lost is not None:
                return Lost(lost)
            left = (until - self.now()) * self.opts.time_scale
            if left <= 0:
                return None
            try:
                return self.events.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
        return None

    def _newly_lost(self, rs: RoundState | None) -> int | None:
        """A selected client that is gone (silent past the heartbeat timeout or left) with no push
        in progress and no answer yet: it no longer holds the round open."""
        if rs is None:
            return None
        now = time.monotonic()
        with self.lock:                       # only the selected clients: cost flat in idle clients
            for c in rs.selected:
                if (not self.is_alive(c, now) and (rs.round, c) not in self.busy and (rs.round, c) not in self.answered
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
        while True:                           # pushes that raced the close: late
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            ev.answer("late", "the round closed before this update was taken")
        self.budget.clear_pool()              # idle until the next round; finalize needs the room
        with self.cv:
            for key in [k for k in self.partial if k[0] == rnd and k not in self.busy]:
                self._drop_partial(key)
        held = self.budget.snapshot()         # after this round's partial buffers were dropped
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

    # -- pushes ---------------------------------------------------------------------------------
    def reserve(self, nbytes: int, chunk_size: int) -> int:
        """Reassembly budget for a push the client declared (`nbytes` Encoded bytes), taken before
        its first message is read; returns the amount, which `begin_push` takes over."""
        if nbytes > self.max_update_bytes:
            raise WireError("RESOURCE_EXHAUSTED",
                            f"update of {nbytes} bytes exceeds the server limit of {self.max_update_bytes} bytes")
        cost = Reassembly.charge(nbytes, chunk_size)
        if not self.budget.acquire(cost, self.opts.push_wait, Reassembly.buffer_bytes(nbytes)):
            raise WireError("UNAVAILABLE", f"server busy: no reassembly buffer free within {self.opts.push_wait:g} s; "
                            "retry later")
        return cost

    def begin_push(self, rnd: int, cid: int, header, reserved: int = 0) -> Reassembly:
        """Validate a push header against the open round; returns the (new or resumed) buffer.
        Takes over `reserved` budget (from `reserve`): used for a new buffer, else given back."""
        try:
            key, ra = self._admit_push(rnd, cid, header)
        except BaseException:
            self.budget.release(reserved)
            raise
        if ra is not None:                  # resumes a partial push: its memory is already held
            self.budget.release(reserved)
            return ra
        try:
            ra = Reassembly(header, max_update_bytes=self.max_update_bytes)
        except WireError:
            self.budget.release(reserved)
            self._release(key)
            raise
        if reserved >= ra.cost:
            self.budget.release(reserved - ra.cost)
        else:
            self.budget.release(reserved)   # declared too little (or nothing): wait for the real size
            if not self.budget.acquire(ra.cost, self.opts.push_wait, ra.buffer_size):
                self._release(key)
                raise WireError("UNAVAILABLE", f"server busy: no reassembly buffer free within "
                                f"{self.opts.push_wait:g} s; retry later")
        ra.attach(self.budget.take(ra.buffer_size))
        with self.lock:
            self.partial[key] = ra
        return ra

    def _task_of(self, rnd: int, cid: int) -> Task | None:
        """The task a push for (rnd, cid) answers: this round's, or an earlier round's within the
        strategy's delay window (delayed jobs)."""
        rs = self.round_state
        if rs is not None and rnd == rs.round:
            return rs.tasks.get(cid)
        if rs is not None and rs.open and 0 < rs.round - rnd <= self.engine.strategy.max_delay:
            return self.engine.tasks_by_round.get(rnd, {}).get(cid)
        return None

    def _admit_push(self, rnd: int, cid: int, header) -> tuple[tuple[int, int], Reassembly | None]:
        """The protocol checks of a push header; marks (round, client) busy. Returns the key and the
        partial push it resumes, if any."""
        self.check_client(cid)
        key = (rnd, cid)
        with self.lock:
            rs = self.round_state
            if self.finished:
                raise WireError("FAILED_PRECONDITION", "the run is finished; no more updates are taken")
            prev = self.answered.get(key)
            if prev is not None:
                raise WireError("ALREADY_EXISTS", f"update of client {cid} for round {rnd} was already received ({prev})")
            task = self._task_of(rnd, cid)
            if task is None:
                cur = self.current_round
                if rs is not None and rnd == rs.round:
                    raise WireError("FAILED_PRECONDITION", f"client {cid} was not selected for round {rnd}")
                what = "is closed" if rnd < cur else "has not started"
                raise WireError("FAILED_PRECONDITION", f"round {rnd} {what} (current round {cur})")
            if not rs.open:
                raise WireError("FAILED_PRECONDITION", f"round {rnd} is closed")
            if header.model_version != rnd:
                raise WireError("FAILED_PRECONDITION", f"update was trained on model version {header.model_version}, "
                                f"round {rnd} uses version {rnd}")
            if header.HasField("job") and header.job != task.job_id:
                raise WireError("INVALID_ARGUMENT", f"job {header.job} does not match the task's job {task.job_id}")
            if key in self.busy:
                raise WireError("ABORTED", f"another push of client {cid} for round {rnd} is in progress")
            try:
                h = result_header(bytes(header.encoded_header))
                allowed = {self.codec.name, "identity"}
                bad = [c for _, c, _, _ in h["items"] if c not in allowed]
                if bad:
                    raise ValueError(f"update codec {bad[0]!r} does not match the run's codec {self.codec.name!r}")
                self.engine.strategy.check_header(task, h["items"], self.numel)
            except ValueError as e:
                raise WireError("INVALID_ARGUMENT", str(e)) from None
            if h["body_size"] != header.body_size:
                raise WireError("INVALID_ARGUMENT", f"body_size {header.body_size} does not match the Encoded "
                                f"sections ({h['body_size']} bytes)")
            ra = self.partial.get(key)
            if ra is not None and not ra.same_header(header):
                self._drop_partial(key)
                ra = None
            self.busy.add(key)
        return key, ra

    def _release(self, key: tuple[int, int]) -> None:
        with self.lock:
            self.busy.discard(key)

    def _drop_partial(self, key: tuple[int, int]) -> None:
        with self.lock:
            ra = self.partial.pop(key, None)
        if ra is not None:
            self.budget.release(ra.cost, ra.detach())

    def abort_push(self, key: tuple[int, int]) -> None:
        """A push failed validation: forget its buffer, count the rejection."""
        self._drop_partial(key)
        self._release(key)
        with self.lock:
            self.rejected += 1
            if self.round_state is not None and self.round_state.round == key[0]:
                self.round_state.rejected += 1

    def finish_push(self, key: tuple[int, int], ra: Reassembly, header, retransmitted: int) -> tuple[str, list[int], int]:
        """After a push stream ended: hand a complete result to the engine and wait for its verdict,
        or keep waiting for missing chunks. Returns (result, missing, holes) with result in
        accepted / incomplete / late; a refusal raises WireError(INVALID_ARGUMENT)."""
        rnd, cid = key
        try:
            missing = ra.missing()
            with self.lock:
                rs = self.round_state
                if rs is not None:
                    rs.retransmitted_chunks += retransmitted
                    if missing:
                        rs.dropped_chunks += len(missing)
            holes: list[tuple[int, int]] = []
            if missing:
                if not self.holes_ok:
                    return "incomplete", missing, 0     # the buffer is kept for the retransmission
                holes = ra.holes()
            ra.verify()
            with self.lock:
                self.partial.pop(key, None)
                task = self._task_of(rnd, cid)
                still_open = task is not None and self.round_state is not None and self.round_state.open
            try:
                if not still_open:
                    verdict, message = "late", ""
                else:
                    verdict, message = self._hand_over(rnd, cid, task, header, ra, holes)
            finally:
                self.budget.release(ra.cost, ra.detach())
            if verdict == "refused":
                raise WireError("INVALID_ARGUMENT", message)
            with self.lock:
                self.answered[key] = verdict
                rs = self.round_state
                if verdict == "accepted" and rs is not None and rnd == rs.round:
                    rs.accepted.append(cid)
            return verdict, [], len(holes) if verdict == "accepted" else 0
        finally:
            self._release(key)

    def _hand_over(self, rnd: int, cid: int, task: Task, header, ra: Reassembly, holes) -> tuple[str, str]:
        """Queue the complete result for the engine and wait for its verdict."""
        done = threading.Event()
        verdict: list[str] = []

        def reply(v: str, message: str) -> None:
            verdict.extend((v, message))
            done.set()

        scalars = {k: float(v) for k, v in header.metrics.items()}
        scalars.setdefault("num_samples", float(header.num_samples))
        scalars.setdefault("train_loss", float(header.train_loss))
        payload = ra.payload()
        try:
            self.events.put(Arrival(client_id=cid, round=rnd, job=task.job_id, payload=payload, scalars=scalars,
                                    time=self.now(), holes=holes, reply=reply))
            while not done.wait(VERDICT_WAIT):
                if self.stop_event.is_set():
                    raise WireError("UNAVAILABLE", "server stopping; push again after it restarts")
        finally:
            payload.release()
        return verdict[0], verdict[1]

    def status(self) -> dict[str, Any]:
        with self.lock:
            rs = self.round_state
            up, down = self.up.snapshot(), self.down.snapshot()
            return {
                "run_name": self.cfg.name, "round": self.current_round, "rounds_total": self.cfg.rounds,
                "phase": "finished" if self.finished else ("training" if rs is not None and rs.open else "waiting"),
                "model_version": self.rounds_done, "clients_joined": len(self.clients),
                "clients_alive": len(self.alive()), "selected": list(rs.selected) if rs else [],
                "accepted": list(rs.accepted) if rs else [], "bytes_up_payload": up["payload_bytes"],
                "bytes_up_wire": up["wire_bytes"], "bytes_down_payload": down["payload_bytes"],
                "bytes_down_wire": down["wire_bytes"], "accuracy": self.last_eval[0], "loss": self.last_eval[1],
                "finished": self.finished, "rejected_pushes": self.rejected,
            }

    def config_json(self) -> str:
        return json.dumps(to_dict(self.cfg))


__all__ = ["ParameterServer", "ServeOptions", "RoundState", "ACCEPTED_LOG"]
