"""Many virtual clients in one process, each with its own id, data partition and error-feedback state,
sharing one gRPC channel and one model download per version.

The loop per virtual client: GetTask -> (TRAIN) fetch the global model -> `runtime.execute` ->
push (resending chunks the server reports missing) -> GetTask ... until the server says FINISHED.
A background thread heartbeats every virtual client; when the server forgets a client (it was
restarted) the client joins again, and a round the server redoes after a crash is retrained from
the error-feedback state the client had before that round, so it is counted exactly once.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import torch

from thinwire import compression
from thinwire.config import RunConfig, build
from thinwire.faults import NetworkModel
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.plugins import load_run_plugins
from thinwire.task import Task
from thinwire.transport import Link

from .grpc_client import Backoff, Connection, ServerUnavailable
from .runtime import ClientState, execute

log = logging.getLogger("thinwire.client")


@dataclass
class FleetOptions:
    server: str
    client_ids: list[int]
    parallel: int = 1               # virtual clients training at the same time
    download_codec: str = ""        # "" = identity (exact fp32 model)
    max_wait: float = 60.0          # total seconds to keep retrying an unreachable server
    torch_threads: int = 1
    progress: bool = True


@dataclass
class VirtualClient:
    cid: int
    x: torch.Tensor
    y: torch.Tensor
    state: ClientState | None = None
    before: ClientState | None = None   # state before `last_round`, to redo that round identically
    last_round: int = -1
    busy: bool = False
    joined: bool = False


@dataclass
class FleetResult:
    rounds_trained: dict[int, int] = field(default_factory=dict)
    accepted: int = 0
    late: int = 0
    refused: int = 0
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    finished: bool = False


class Fleet:
    def __init__(self, opts: FleetOptions, security) -> None:
        self.opts = opts
        self.conn = Connection(opts.server, security, backoff=Backoff(max_wait=opts.max_wait))
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

    def setup(self) -> None:
        from thinwire.data import dataset_from_config

        torch.set_num_threads(self.opts.torch_threads)
        first = self.opts.client_ids[0]
        self._join(first)
        # Keep the first id alive while the data set loads (it may be selected meanwhile).
        self.clients[first] = VirtualClient(first, torch.empty(0), torch.empty(0), joined=True)
        threading.Thread(target=self._heartbeats, name="tw-heartbeat", daemon=True).start()
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
            for cid, vc in list(self.clients.items()):
                if self.finished.is_set():
                    return
                try:
                    r = self.conn.heartbeat(cid, vc.last_round if vc.busy else -1)
                    if r.finished:
                        self.server_finished = True
                        self.finished.set()
                    elif not r.known:
                        vc.joined = False
                except grpc.RpcError:
                    pass                        # the task loop handles reconnection
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
        rnd = int(reply.round)
        if rnd == vc.last_round:
            state = vc.before                  # the server redoes this round: start from the same state
        else:
            state = vc.state
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
                        return "late"
                    time.sleep(min(0.02, max(0.0, modeled - (time.perf_counter() - t0))))
            time.sleep(max(0.0, modeled - (time.perf_counter() - t0)))
        link = Link(self.net, vc.cid, "up", self.time_scale)
        try:
            push = self.conn.push(client_id=vc.cid, rnd=rnd, model_version=int(reply.model_version),
                                  payload=res.payload, header_size=res.header_size, num_samples=res.num_samples,
                                  train_loss=float(res.scalars.get("train_loss", 0.0)), link=link,
                                  chunk_size=self.chunk_size, metrics=res.scalars, job=res.job)
            outcome = "accepted" if push.result == pb2.PushReply.ACCEPTED else "late"
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                outcome = "accepted"           # a retry of a push the server already counted
            elif e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
                log.info("client %d: push interrupted (%s); will ask for the task again", vc.cid, e.code().name)
                return "retry"
            elif e.code() == grpc.StatusCode.FAILED_PRECONDITION and ("is closed" in (e.details() or "")
                                                                      or "finished" in (e.details() or "")):
                log.info("client %d: round %d closed before the update arrived", vc.cid, rnd)
                outcome = "late"               # over-committed and slower than the first K: normal
            else:
                log.warning("client %d: push for round %d refused: %s: %s", vc.cid, rnd, e.code().name, e.details())
                outcome = "refused"
        if rnd != vc.last_round:
            vc.before = vc.state
        vc.state, vc.last_round = res.state, rnd
        return outcome

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
            outcome = self._work(vc, reply)
            with self.lock:
                if outcome == "accepted":
                    self.result.accepted += 1
                    self.result.rounds_trained[vc.cid] = self.result.rounds_trained.get(vc.cid, 0) + 1
                elif outcome == "late":
                    self.result.late += 1
                elif outcome == "refused":
                    self.result.refused += 1
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
        try:
            while not self.finished.is_set():
                wait = 0.5
                for cid, vc in self.clients.items():
                    if vc.busy or self.finished.is_set():
                        continue
                    try:
                        if not vc.joined:
                            self._join(cid)
                        reply = self.conn.get_task(cid)
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                            vc.joined = False  # the server restarted and forgot us: join again
                            continue
                        raise
                    if reply.action == pb2.TaskReply.FINISHED:
                        self.server_finished = True
                        self.finished.set()
                        break
                    if reply.action == pb2.TaskReply.TRAIN:
                        vc.busy = True
                        pool.submit(self._job, vc, reply)
                    else:
                        wait = min(wait, max(0.05, reply.retry_after_s))
                self.finished.wait(wait)
        finally:
            self.finished.set()
            pool.shutdown(wait=True, cancel_futures=True)
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
