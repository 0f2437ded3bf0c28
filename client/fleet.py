"""Many virtual clients in one process, each with its own id, data partition and error-feedback state,
sharing one gRPC channel and one model download per version.

The loop per virtual client: task poll -> (TRAIN) fetch the global model -> `runtime.execute` ->
push (resending chunks the server reports missing) -> task poll ... until the server says FINISHED.
The control plane is batched per process: one GetTasks call polls every idle virtual client and
one HeartbeatMany call (from a background thread) keeps them all alive, so the server's cost of
an idle client is a dict update, not an RPC. When the server forgets a client (it was restarted)
the client joins again, and a round the server redoes after a crash is retrained from
the error-feedback state the client had before that round, so it is counted exactly once.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, replace

import grpc
import torch

from thinwire import compression
from thinwire.config import RunConfig, build
from thinwire.faults.network import NetworkModel
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.plugins import load_run_plugins
from thinwire.faults.crash import crash_point
from thinwire.secagg.wire import KIND as SECAGG_KIND
from thinwire.task import Task
from thinwire.wire.link import Link

from thinwire.client.grpc_client import Backoff, Connection, ServerUnavailable
from thinwire.client.runtime import ClientState, execute
from thinwire.client.secure_agg import Abandoned, SecAggLink

log = logging.getLogger("thinwire.client")
BATCH = 4096                    # virtual clients per HeartbeatMany / GetTasks call


def batches(ids: list[int], size: int = BATCH):
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


@dataclass
class FleetOptions:
    server: str
    client_ids: list[int]
    parallel: int = 1               # virtual clients training at the same time
    download_codec: str = ""        # "" = identity (exact fp32 model)
    max_wait: float = 60.0          # total seconds to keep retrying an unreachable server
    torch_threads: int = 1
    progress: bool = True
    body_digest: bool = False       # pushes also carry the body's sha256


@dataclass
class VirtualClient:
    cid: int
    x: torch.Tensor
    y: torch.Tensor
    state: ClientState | None = None
    before: ClientState | None = None   # state before `last_round`, to redo that round identically
    last_round: int = -1
    secure_round: int = -1              # round of the last secure-aggregation task taken (run once)
    busy: bool = False
    joined: bool = False


PUSH_OUTCOMES = ("accepted", "already_received", "late", "refused", "retried", "failed")


@dataclass
class FleetResult:
    """What the fleet's pushes became. Every push (a call that sends one update, retransmissions of
    its missing chunks included) has exactly one outcome, so `pushes` is the sum of the six:
    accepted; already_received (ALREADY_EXISTS: the server had it, e.g. the reply to an earlier
    push was lost); late; refused (the server will not take it); retried (UNAVAILABLE / ABORTED /
    DEADLINE_EXCEEDED: the task is asked for again); failed (anything else, e.g. a broken stream)."""
    rounds_trained: dict[int, int] = field(default_factory=dict)
    pushes: int = 0
    accepted: int = 0
    already_received: int = 0
    late: int = 0
    refused: int = 0
    retried: int = 0
    failed: int = 0
    push_seconds: list[float] = field(default_factory=list)   # wall time of each push call
    abandoned: int = 0              # tasks given up before any push (their round closed meanwhile)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    finished: bool = False

    def count(self, outcome: str, seconds: float) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.pushes += 1
        self.push_seconds.append(seconds)

    def summary(self) -> str:
        """'N pushes = a updates accepted + e already received + l late + r refused + t retried + f failed'."""
        parts = " + ".join(f"{getattr(self, o)} {'updates accepted' if o == 'accepted' else o.replace('_', ' ')}"
                           for o in PUSH_OUTCOMES)
        return f"{self.pushes} pushes = {parts}" + (f"; {self.abandoned} tasks abandoned" if self.abandoned else "")


def push_outcome(e: grpc.RpcError) -> str:
    """The outcome of a push that ended with a gRPC error (see FleetResult)."""
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return "already_received"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "retried"
    if code == grpc.StatusCode.FAILED_PRECONDITION and ("is closed" in details or "finished" in details):
        return "late"                          # over-committed and slower than the first K: normal
    if code == grpc.StatusCode.CANCELLED:
        return "failed"
    return "refused"


class Fleet:
    def __init__(self, opts: FleetOptions, security) -> None:
        self.opts = opts
        self.conn = Connection(opts.server, security, backoff=Backoff(max_wait=opts.max_wait),
                               body_digest=opts.body_digest)
        self.clients: dict[int, VirtualClient] = {}
        self.cfg: RunConfig | None = None
        self.net: NetworkModel | None = None
        self.time_scale = 1.0
        self.chunk_size = 65536
        self.heartbeat_interval = 1.0
        self.finished = threading.Event()
        self.server_finished = False
        self.lock = threading.Lock()
        self._model_cache: tuple[int, torch.Tensor] | None = None
        self._model_lock = threading.Lock()
        self._local = threading.local()
        self._watch_lock = threading.Lock()
        self._watch_t = 0.0
        self._server_round = -1
        self.result = FleetResult()
        self._slots = threading.Semaphore(max(opts.parallel, 1))

    # -- setup ----------------------------------------------------------------------------------
    def _join(self, cid: int) -> None:
        reply, cfg_dict = self.conn.join(cid)
        if self.cfg is None:
            self.cfg = build(RunConfig, cfg_dict)
            self.chunk_size = int(reply.chunk_size)
            self.heartbeat_interval = float(reply.heartbeat_interval_s)
            self.time_scale = float(reply.time_scale) or 1.0
            self.net = NetworkModel.from_config(self.cfg) if reply.emulate_network else None
            load_run_plugins(self.cfg)       # the run's user strategy / codec / task kinds, here too
        vc = self.clients.get(cid)
        if vc is not None:
            vc.joined = True
            vc.secure_round = -1                # a restarted server redoes its round with fresh keys

    def setup(self) -> None:
        from thinwire.data.datasets import dataset_from_config

        torch.set_num_threads(self.opts.torch_threads)
        first = self.opts.client_ids[0]
        self._join(first)
        # Keep the first id alive while the data set loads (it may be selected meanwhile).
        self.clients[first] = VirtualClient(first, torch.empty(0), torch.empty(0), joined=True)
        self._heartbeat_thread = threading.Thread(target=self._heartbeats, name="tw-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        cfg = self.cfg
        assert cfg is not None
        bad = [c for c in self.opts.client_ids if c >= cfg.clients]
        if bad:
            raise ServerUnavailable(f"client ids {bad} are out of range: the run has clients 0..{cfg.clients - 1}")
        data = dataset_from_config(cfg)
        self._data = data
        for cid in self.opts.client_ids:
            x, y = data.client_data(cid)
            if cid == first:
                self.clients[cid].x, self.clients[cid].y = x, y
            else:
                self.clients[cid] = VirtualClient(cid, x, y)
                self._join(cid)
        log.info("joined %s as clients %s (%s)", self.opts.server, self.opts.client_ids,
                 "emulated network" if self.net else "real network")

    def _model(self):
        m = getattr(self._local, "model", None)
        if m is None:
            from thinwire.models import model_from_config
            from thinwire.training import model_spec
            m = self._local.model = model_from_config(self.cfg, self._data)
            self._local.spec = model_spec(m)
        return m

    # -- heartbeats -----------------------------------------------------------------------------
    def _heartbeats(self) -> None:
        while not self.finished.is_set():
            clients = list(self.clients.items())
            for batch in batches(clients):
                if self.finished.is_set():
                    return
                try:
                    r = self.conn.heartbeat_many([(cid, vc.last_round if vc.busy else -1) for cid, vc in batch])
                except grpc.RpcError:
                    continue                    # the task loop handles reconnection
                if r.finished:
                    self.server_finished = True
                    self.finished.set()
                for cid in r.unknown:
                    if cid in self.clients:
                        self.clients[cid].joined = False
            self.finished.wait(self.heartbeat_interval)

    # -- one round of one virtual client --------------------------------------------------------
    def _global(self, cid: int, version: int, rnd: int) -> torch.Tensor:
        with self._model_lock:
            if self._model_cache is not None and self._model_cache[0] == version:
                vec = self._model_cache[1]
            else:
                ver, blob = self.conn.get_model(cid, version, self.opts.download_codec)
                enc = compression.Encoded.from_bytes(blob)
                codec = compression.get(enc.codec, **enc.params)
                self._model()
                segments = self._local.spec.segments if enc.numel == self._local.spec.numel else None
                ctx = compression.Context(seed=self.cfg.seed, round=ver, client_id=0, shared=True, segments=segments)
                vec = codec.decode(enc, ctx).float()
                self._model_cache = (ver, vec)
        if self.net is not None:              # this device's own download time under the model
            t = self.net.download(cid, rnd, 4 * vec.numel())
            Link(self.net, cid, "down", self.time_scale).wait(t.time_s)
        return vec

    def _work(self, vc: VirtualClient, reply) -> str:
        task = Task.from_dict(json.loads(reply.task_json))
        if task.kind == SECAGG_KIND:
            return self._secure_work(vc, reply, task)
        res = self._compute(vc, reply, task)
        return res if isinstance(res, str) else self._deliver(vc, reply, res)

    def _compute(self, vc: VirtualClient, reply, task: Task):
        """Run the task from the client's state before its round (a redone round starts from the
        same state); returns its ClientResult, or "abandoned"."""
        rnd = int(reply.round)
        state = vc.before if rnd == vc.last_round else vc.state
        global_vec = self._global(vc.cid, int(reply.model_version), rnd)
        t0 = time.perf_counter()
        model = self._model()
        res = execute(task, model=model, spec=self._local.spec, global_vec=global_vec, data=self._data,
                      x=vc.x, y=vc.y, state=state)
        if self.net is not None:               # emulate this device's compute speed / straggling
            modeled = self.net.compute_time(vc.cid, rnd, res.work) * self.time_scale
            if task.params.get("abandon_late"):
                # The task's result is worthless once its round closed (gradient coding: an erasure):
                # stop "computing" then, as a cancelled worker would, instead of starting late next round.
                while time.perf_counter() - t0 < modeled:
                    if self._round_moved_past(vc.cid, rnd):
                        log.info("client %d: round %d closed while computing; task abandoned", vc.cid, rnd)
                        with self.lock:
                            self.result.abandoned += 1
                        return "abandoned"
                    time.sleep(min(0.02, max(0.0, modeled - (time.perf_counter() - t0))))
            time.sleep(max(0.0, modeled - (time.perf_counter() - t0)))
        return res

    def _deliver(self, vc: VirtualClient, reply, res) -> str:
        """Push a result; on success (or a definite answer) the client's new state becomes its own."""
        rnd = int(reply.round)
        link = Link(self.net, vc.cid, "up", self.time_scale)
        t_push = time.perf_counter()
        try:
            push = self.conn.push(client_id=vc.cid, rnd=rnd, model_version=int(reply.model_version),
                                  payload=res.payload, header_size=res.header_size, num_samples=res.num_samples,
                                  train_loss=float(res.scalars.get("train_loss", 0.0)), link=link,
                                  chunk_size=self.chunk_size, metrics=res.scalars, job=res.job)
            outcome = "accepted" if push.result == pb2.PushReply.ACCEPTED else "late"
        except grpc.RpcError as e:
            outcome = push_outcome(e)
            if outcome == "refused":
                log.warning("client %d: push for round %d refused: %s: %s", vc.cid, rnd, e.code().name, e.details())
            else:
                log.info("client %d: push for round %d: %s (%s)", vc.cid, rnd, outcome, e.code().name)
        except Exception:
            self._count(vc, "failed", time.perf_counter() - t_push)
            raise
        self._count(vc, outcome, time.perf_counter() - t_push)
        if outcome in ("retried", "failed"):
            return outcome                     # ask for the task again; the state stays as it was
        if rnd != vc.last_round:
            vc.before = vc.state
        vc.state, vc.last_round = res.state, rnd
        return outcome

    def _secure_work(self, vc: VirtualClient, reply, task: Task) -> str:
        """A secure-aggregation round (client/secure_agg.py): keys, then the masked input, then the
        shares that unmask the sum. The clear result never leaves this process."""
        from thinwire.secagg.protocol import SecAggClient
        from thinwire.secagg.wire import clear_input, masked_payload, params_of

        rnd = int(reply.round)
        params = params_of(task, int(reply.model_numel))
        client = SecAggClient(vc.cid, params)
        link = SecAggLink(self.conn, vc.cid, rnd, self.finished)
        try:
            link.advertise(*client.advertise())
            link.share(*client.share_keys(link.roster()))
            inbox, u1 = link.inbox()
            with self._slots:                  # training takes one of the `parallel` slots
                res = self._compute(vc, reply, task)
            if isinstance(res, str):
                return res
            crash_point("secagg_masked", rnd)
            enc = masked_payload(client.masked_input(clear_input(res.payload), inbox, u1), params)
            masked = replace(res, payload=enc.to_bytes(), header_size=enc.header_size)
            outcome = self._deliver(vc, reply, masked)
            for delay in (0.2, 0.5, 1.0, 2.0):   # this round's keys live only here: retry the push in place
                if outcome not in ("retried", "failed") or self.finished.is_set():
                    break
                time.sleep(delay)
                outcome = self._deliver(vc, reply, masked)
            if outcome == "accepted":
                link.reveal(client.unmask(link.survivors()))
            return outcome
        except Abandoned as e:
            log.info("client %d: secure aggregation of round %d went on without it: %s", vc.cid, rnd, e)
            with self.lock:
                self.result.abandoned += 1
            return "abandoned"

    def _count(self, vc: VirtualClient, outcome: str, seconds: float) -> None:
        with self.lock:
            self.result.count(outcome, seconds)
            if outcome in ("accepted", "already_received"):
                self.result.rounds_trained[vc.cid] = self.result.rounds_trained.get(vc.cid, 0) + 1

    def _round_moved_past(self, cid: int, rnd: int) -> bool:
        """Has the server opened a round after `rnd`? One heartbeat per fleet every 50 ms at most."""
        with self._watch_lock:
            now = time.monotonic()
            if self._server_round <= rnd and now - self._watch_t >= 0.05:
                self._watch_t = now
                try:
                    self._server_round = max(self._server_round, int(self.conn.heartbeat(cid, rnd).round))
                except grpc.RpcError:
                    pass
            return self._server_round > rnd

    def _job(self, vc: VirtualClient, reply) -> None:
        try:
            self._work(vc, reply)
        except grpc.RpcError as e:
            log.info("client %d: %s during round %s: %s", vc.cid, e.code().name, reply.round, e.details())
        except Exception:
            log.exception("client %d: round %s failed", vc.cid, reply.round)
        finally:
            vc.busy = False

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> FleetResult:
        self.setup()
        pool = futures.ThreadPoolExecutor(max_workers=self.opts.parallel, thread_name_prefix="tw-client")
        # Secure-aggregation tasks wait on the other clients' keys: each gets its own thread, and
        # only its training takes one of the `parallel` slots (else waiting clients would hold
        # every slot while the keys they wait for sit in the queue).
        secure = futures.ThreadPoolExecutor(max_workers=min(len(self.opts.client_ids), 1024),
                                            thread_name_prefix="tw-secagg")
        try:
            while not self.finished.is_set():
                wait = 0.5
                for cid, vc in self.clients.items():
                    if not vc.joined and not vc.busy:
                        self._join(cid)        # the server restarted and forgot us: join again
                idle = [cid for cid, vc in self.clients.items() if not vc.busy]
                for batch in batches(idle):
                    if self.finished.is_set():
                        break
                    reply = self.conn.get_tasks(batch)
                    if reply.finished:
                        self.server_finished = True
                        self.finished.set()
                        break
                    for cid in reply.unknown:
                        self.clients[cid].joined = False
                    for task in reply.tasks:
                        vc = self.clients.get(task.client_id)
                        if vc is not None and not vc.busy:
                            secagg = json.loads(task.task_json).get("kind") == SECAGG_KIND
                            if secagg and vc.secure_round == task.round:
                                continue       # its keys were spent: the round goes on without it
                            if secagg:
                                vc.secure_round = task.round
                            vc.busy = True
                            (secure if secagg else pool).submit(self._job, vc, task)
                    wait = min(wait, max(0.05, reply.retry_after_s))
                self.finished.wait(wait)
        finally:
            self.finished.set()
            pool.shutdown(wait=True, cancel_futures=True)
            secure.shutdown(wait=True, cancel_futures=True)
            hb = getattr(self, "_heartbeat_thread", None)
            if hb is not None:      # no RPC may be in flight when the channel closes and Python exits
                hb.join(timeout=10)
            if not self.server_finished:      # a finished run forgets its clients anyway
                for cid in self.clients:
                    self.conn.leave(cid)
            self.conn.close()
        self.result.finished = self.server_finished
        self.result.bytes_up = self.conn.up.snapshot()
        self.result.bytes_down = self.conn.down.snapshot()
        return self.result


def run_fleet(opts: FleetOptions, security) -> FleetResult:
    return Fleet(opts, security).run()


__all__ = ["Fleet", "FleetOptions", "FleetResult", "run_fleet"]
