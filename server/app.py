"""The served parameter server: global model, the real-time round loop, pushes, checkpoints.

Rounds follow the same RoundPolicy and Strategy as the simulator, in wall time: select
ceil(K * overcommit) of the live clients, accept updates as they complete (`admit`), close on the
first K, the deadline, or when no selected client is left alive (`should_close`). Each update is
decoded and folded into the strategy's accumulator the moment its last chunk arrives, so memory is
one accumulator plus the reassembly buffers of pushes in flight (capped by a byte budget).

Exactly-once: the checkpoint written after a round is finalized holds the model, the strategy and
the accepted (round, client) history. A crash mid-round loses only that round's partial sum; on
`--resume` the round is redone from the checkpoint and clients re-fetch their task. Within a
round, the accepted set makes pushes idempotent per (round, client).
"""
from __future__ import annotations

import json
import logging
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from thinwire import checkpoint, compression
from thinwire.config import RunConfig, to_dict
from thinwire.faults import NetworkModel
from thinwire.metrics import MetricsWriter
from thinwire.task import TaskSpec, decode_update
from thinwire.transport import BufferBudget, ByteCounter, Reassembly, WireError, sha256

from .driver import RoundPolicy
from .strategy import make_strategy

log = logging.getLogger("thinwire.server")
ACCEPTED_LOG = "accepted.jsonl"


@dataclass
class ServeOptions:
    """Settings of the served process that are not part of the federated run itself."""
    host: str = "127.0.0.1"
    port: int = 50051
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0      # a client silent this long is gone (its round slot freed)
    join_wait: float = 30.0             # wait this long for ceil(K*overcommit) live clients, then take what is there
    max_update_bytes: int = 0           # 0 = 4 x the fp32 model + 1 MiB
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
    tasks: dict[int, TaskSpec]
    accepted: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    open: bool = True
    dropped_chunks: int = 0
    retransmitted_chunks: int = 0
    hole_chunks: int = 0
    rejected: int = 0


@dataclass
class ClientInfo:
    last_seen: float
    hostname: str = ""
    left: bool = False


def parse_encoded_header(raw: bytes) -> dict[str, Any]:
    """The JSON header of an `Encoded` prefix + header (without the body); raises WireError."""
    if len(raw) < 8 or raw[:3] != compression.base.MAGIC:
        raise WireError("INVALID_ARGUMENT", "encoded_header: not a thinwire Encoded header (bad magic)")
    _, version, hlen = struct.unpack_from("<3sBI", raw)
    if version != compression.base.FORMAT_VERSION or 8 + hlen != len(raw):
        raise WireError("INVALID_ARGUMENT", f"encoded_header: version {version} / length {hlen} do not match")
    try:
        h = json.loads(raw[8:])
        sizes = [int(s) for _, s in h["sections"]]
        int(h["numel"])
        str(h["codec"])
    except (ValueError, KeyError, TypeError) as e:
        raise WireError("INVALID_ARGUMENT", f"encoded_header: malformed JSON header ({e})") from None
    h["body_size"] = sum(sizes)
    return h


class ParameterServer:
    """State and round loop of one served run; the gRPC servicer calls into it."""

    def __init__(self, cfg: RunConfig, opts: ServeOptions, *, resume: bool = False,
                 init_vec: torch.Tensor | None = None, evaluator: Callable[[torch.Tensor], tuple[float, float]] | None = None,
                 segments: tuple[int, ...] | None = None) -> None:
        self.cfg, self.opts = cfg, opts
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if init_vec is None:
            init_vec, evaluator, segments = self._build_model()
        self.global_vec = init_vec.detach().float().reshape(-1).clone()
        self.numel = self.global_vec.numel()
        self.segments = segments
        self.evaluator = evaluator
        self.policy = RoundPolicy.from_config(cfg)
        self.strategy = make_strategy(cfg)
        self.net = NetworkModel.from_config(cfg)
        self.codec = compression.from_spec(cfg.codec)
        self.holes_ok = cfg.loss_policy == "holes" and self.codec.supports_holes
        model_bytes = 4 * self.numel
        self.max_update_bytes = opts.max_update_bytes or 4 * model_bytes + (1 << 20)
        # Default: two full-precision pushes (with their per-push overhead), so one is received
        # while the other is checked and folded into the sum.
        push = Reassembly.charge(model_bytes + (1 << 16), cfg.chunk_size)
        self.budget = BufferBudget(opts.buffer_budget or max(32 << 20, 2 * push))
        self.up, self.down = ByteCounter(), ByteCounter()
        self.lock = threading.RLock()
        self.agg_lock = threading.Lock()             # taken before `lock`, never after it
        self.cv = threading.Condition(self.lock)
        self.clients: dict[int, ClientInfo] = {}
        self.partial: dict[tuple[int, int], Reassembly] = {}
        self.busy: set[tuple[int, int]] = set()
        self.decode_slots = threading.Semaphore(1)   # one decoded model-size temporary at a time
        self.round_state: RoundState | None = None
        self.history: list[dict[str, Any]] = []      # accepted (round, client) per finished round
        self.rounds_done = 0
        self.finished = False
        self.stop_event = threading.Event()
        self.last_eval: tuple[float, float] = (float("nan"), float("nan"))
        self.rejected = 0
        self.wall_before = 0.0
        self._blobs: dict[tuple[int, str], tuple[bytes, int, bytes]] = {}
        ckpt = checkpoint.load(self.run_dir) if resume else None
        if resume and ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from round 0", self.run_dir)
        if ckpt is not None:
            self.global_vec = ckpt["global"].float()
            self.strategy.load_state_dict(ckpt["strategy"])
            self.history = list(ckpt["history"])
            self.rounds_done = int(ckpt["round"]) + 1
            self.wall_before = float(ckpt.get("wall_time", 0.0))
            log.info("resuming %s after round %d", self.run_dir, ckpt["round"])
        self.writer = MetricsWriter(self.run_dir, resume_after=self.rounds_done - 1 if ckpt is not None else None)
        self._rewrite_accepted_log()
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1) + "\n")
        self.finished = self.rounds_done >= cfg.rounds
        self.t0 = time.monotonic()

    # -- model ----------------------------------------------------------------------------------
    def _build_model(self):
        from thinwire.data import dataset_from_config
        from thinwire.models import model_from_config
        from thinwire.training import evaluate, get_flat, model_spec, set_flat

        torch.manual_seed(self.cfg.seed)                  # same initial model as `thinwire simulate`
        data = dataset_from_config(self.cfg)
        model = model_from_config(self.cfg, data)
        spec = model_spec(model)
        x_test, y_test = data.test_data()

        def evaluator(vec: torch.Tensor) -> tuple[float, float]:
            set_flat(model, vec, spec)
            return evaluate(model, x_test, y_test)

        return get_flat(model), evaluator, spec.segments

    @property
    def current_round(self) -> int:
        return self.round_state.round if self.round_state is not None else self.rounds_done

    def model_blob(self, version: int, codec_spec: str) -> tuple[bytes, int, bytes, int]:
        """(Encoded bytes, header size, body sha256, version) of the global model; cached, so all
        downloads of one version share one copy."""
        with self.lock:
            if version not in (-1, self.rounds_done):
                raise WireError("FAILED_PRECONDITION",
                                f"model version {version} is not available (current version {self.rounds_done})")
            version = self.rounds_done
            key = (version, codec_spec or "identity")
            hit = self._blobs.get(key)
            if hit is not None:
                return (*hit, version)
            vec = self.global_vec
        try:
            codec = compression.from_spec(codec_spec or "identity")
        except ValueError as e:
            raise WireError("INVALID_ARGUMENT", f"download codec: {e}") from None
        ctx = compression.Context(seed=self.cfg.seed, round=version, client_id=0, segments=self.segments, shared=True)
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
        """('train', (RoundState, TaskSpec, seconds left)) / ('wait', reason) / ('finished', None)."""
        with self.lock:
            if self.finished:
                return "finished", None
            rs = self.round_state
            if rs is None or not rs.open:
                return "wait", f"no round open (next round {self.current_round})"
            if cid not in rs.tasks:
                return "wait", f"client {cid} not selected for round {rs.round}"
            if cid in rs.accepted or cid in rs.late:
                return "wait", f"update for round {rs.round} already received"
            left = 0.0
            if self.cfg.deadline > 0:
                left = max(0.0, self.deadline_s - (time.monotonic() - rs.started))
            return "train", (rs, rs.tasks[cid], left)

    def _elapsed(self, rs: RoundState, now: float | None = None) -> float:
        """Round time in the policy's units: wall seconds divided by the time scale."""
        return ((now or time.monotonic()) - rs.started) / max(self.opts.time_scale, 1e-12)

    @property
    def deadline_s(self) -> float:
        return self.cfg.deadline * self.opts.time_scale

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

    def _admit_push(self, rnd: int, cid: int, header) -> tuple[tuple[int, int], Reassembly | None]:
        """The protocol checks of a push header; marks (round, client) busy. Returns the key and the
        partial push it resumes, if any."""
        self.check_client(cid)
        key = (rnd, cid)
        with self.lock:
            rs = self.round_state
            if self.finished:
                raise WireError("FAILED_PRECONDITION", "the run is finished; no more updates are taken")
            if rs is None or rnd != rs.round:
                cur = self.current_round
                what = "is closed" if rnd < cur else "has not started"
                raise WireError("FAILED_PRECONDITION", f"round {rnd} {what} (current round {cur})")
            if cid not in rs.tasks:
                raise WireError("FAILED_PRECONDITION", f"client {cid} was not selected for round {rnd}")
            if cid in rs.accepted:
                raise WireError("ALREADY_EXISTS", f"update of client {cid} for round {rnd} was already accepted")
            if cid in rs.late:
                raise WireError("ALREADY_EXISTS", f"update of client {cid} for round {rnd} was already received (late)")
            if not rs.open:
                raise WireError("FAILED_PRECONDITION", f"round {rnd} is closed")
            if header.model_version != self.rounds_done:
                raise WireError("FAILED_PRECONDITION", f"update was trained on model version {header.model_version}, "
                                f"round {rnd} uses version {self.rounds_done}")
            if key in self.busy:
                raise WireError("ABORTED", f"another push of client {cid} for round {rnd} is in progress")
            h = parse_encoded_header(bytes(header.encoded_header))
            if h["codec"] != self.codec.name:
                raise WireError("INVALID_ARGUMENT", f"update codec {h['codec']!r} does not match the run's "
                                f"codec {self.codec.name!r}")
            if int(h["numel"]) != self.numel:
                raise WireError("INVALID_ARGUMENT", f"update has {h['numel']} elements, the model has {self.numel}")
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
        """After a push stream ended: accept, keep waiting for missing chunks, or report late.

        Returns (result, missing, holes) with result in accepted / incomplete / late.
        """
        rnd, cid = key
        try:
            missing = ra.missing()
            with self.lock:
                rs = self.round_state
                if rs is not None and rs.round == rnd:
                    rs.retransmitted_chunks += retransmitted
                    if missing:
                        rs.dropped_chunks += len(missing)
            holes: list[tuple[int, int]] = []
            if missing:
                if not self.holes_ok:
                    with self.lock:
                        self.busy.discard(key)      # keep the buffer for the retransmission
                    return "incomplete", missing, 0
                holes = ra.holes()
            ra.verify()
            with self.lock:
                rs = self.round_state
                if rs is None or rs.round != rnd or not rs.open:
                    late = True
                else:
                    late = not self.policy.admit(len(rs.accepted), self._elapsed(rs))
                task = rs.tasks[cid] if rs is not None and rs.round == rnd else None
            if late or task is None:
                self._record_late(rnd, cid)
                return "late", [], 0
            with self.decode_slots:
                with self.lock:
                    self.partial.pop(key, None)
                payload = ra.payload()
                try:
                    late = self._fold_in(rnd, cid, payload, task, header, holes)
                finally:
                    payload.release()
                    self.budget.release(ra.cost, ra.detach())
            if late:
                self._record_late(rnd, cid)
                return "late", [], 0
            return "accepted", [], len(holes)
        finally:
            self._release(key)

    def _fold_in(self, rnd: int, cid: int, payload: memoryview, task: TaskSpec, header, holes) -> bool:
        """Decode, check and accumulate one complete update; True when it came too late to count.

        The decoded update may be a view of `payload` (fp32 bodies decode in place), so it is
        dropped here, before the caller recycles the reassembly buffer."""
        try:
            update = decode_update(payload, task, self.segments, holes)
        except ValueError as e:
            raise WireError("INVALID_ARGUMENT", f"cannot decode update: {e}") from None
        if update.numel() != self.numel:
            raise WireError("INVALID_ARGUMENT", f"update decodes to {update.numel()} elements, the model "
                            f"has {self.numel}")
        # agg_lock serialises the strategy; the state lock is held only for bookkeeping so
        # heartbeats and task requests are not stuck behind a model-size addition.
        with self.agg_lock:
            with self.lock:
                rs = self.round_state
                late = (rs is None or rs.round != rnd or not rs.open or cid in rs.accepted or
                        not self.policy.admit(len(rs.accepted), self._elapsed(rs)))
            if not late:
                try:     # the strategy refuses what it cannot fold in (NaN, Inf, overflow) before changing its sum
                    self.strategy.accumulate(cid, update, int(header.num_samples),
                                             {"train_loss": float(header.train_loss)})
                except ValueError as e:
                    raise WireError("INVALID_ARGUMENT", str(e)) from None
                with self.cv:
                    rs.accepted.append(cid)
                    rs.hole_chunks += len(holes)
                    self.cv.notify_all()
        return late

    def _record_late(self, rnd: int, cid: int) -> None:
        self._drop_partial((rnd, cid))
        with self.lock:
            rs = self.round_state
            if rs is not None and rs.round == rnd and cid not in rs.late and cid not in rs.accepted:
                rs.late.append(cid)

    # -- the round loop -------------------------------------------------------------------------
    def run_rounds(self, progress: bool = False) -> None:
        """Drive rounds until done or stopped; runs in its own thread."""
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=self.cfg.rounds, initial=self.rounds_done, desc=f"serve {self.cfg.name}",
                       unit="round", dynamic_ncols=True)
        try:
            while not self.finished and not self.stop_event.is_set():
                row = self._one_round()
                if row is None:
                    break
                if bar is not None:
                    bar.update(1)
                    acc = row.get("accuracy")
                    bar.set_postfix(acc=f"{acc:.3f}" if acc is not None else "-", accepted=row["accepted"])
        finally:
            if bar is not None:
                bar.close()
            with self.cv:
                if self.rounds_done >= self.cfg.rounds:
                    self.finished = True
                self.cv.notify_all()

    def _wait_for_clients(self) -> list[int] | None:
        need = self.policy.n_select
        t_end = time.monotonic() + self.opts.join_wait
        with self.cv:
            while not self.stop_event.is_set():
                alive = self.alive()
                if len(alive) >= need:
                    return alive
                if time.monotonic() >= t_end and len(alive) >= self.policy.min_clients:
                    log.warning("round %d: only %d of %d wanted clients are alive; selecting them",
                                self.rounds_done, len(alive), need)
                    return alive
                self.cv.wait(0.1)
        return None

    def _one_round(self) -> dict[str, Any] | None:
        rnd = self.rounds_done
        alive = self._wait_for_clients()
        if alive is None:
            return None
        selected = self.policy.select(rnd, alive)
        extra = self.strategy.configure_round(rnd, selected)
        tasks = {cid: TaskSpec.from_config(self.cfg, rnd, cid, **extra) for cid in selected}
        up0, down0 = self.up.snapshot(), self.down.snapshot()
        with self.cv:
            self.strategy.begin_round(rnd, self.global_vec)
            rs = self.round_state = RoundState(rnd, selected, time.monotonic(), tasks)
            self.cv.notify_all()
        log.info("round %d: selected %s", rnd, selected)
        with self.cv:
            while not self.stop_event.is_set():
                now = time.monotonic()
                alive_now = set(self.alive())
                outstanding = [c for c in selected if c not in rs.accepted and c not in rs.late and
                               (c in alive_now or (rnd, c) in self.busy)]
                if self.policy.should_close(len(rs.accepted), len(outstanding), self._elapsed(rs, now)):
                    break
                self.cv.wait(0.05)
            if self.stop_event.is_set():
                return None
        with self.agg_lock:                       # no accumulate in progress from here on
            with self.cv:
                rs.open = False
                round_time = time.monotonic() - rs.started
                accepted = list(rs.accepted)
            self.budget.clear_pool()              # idle until the next round; finalize needs the room
            if self.policy.enough(len(accepted)):
                new_vec, agg = self.strategy.finalize()
            else:
                self.strategy.finalize()
                new_vec, agg = self.global_vec, {"aggregated": 0, "skipped": True}
        with self.cv:
            for key in [k for k in self.partial if k[0] == rnd and k not in self.busy]:
                self._drop_partial(key)
        self.global_vec = new_vec.detach().float().reshape(-1)
        up1, down1 = self.up.snapshot(), self.down.snapshot()
        row: dict[str, Any] = {
            "round": rnd,
            "round_time": round_time,
            "selected": len(selected),
            "accepted": len(accepted),
            "accepted_clients": accepted,
            "dropped_clients": [c for c in selected if c not in accepted],
            "stragglers": [c for c in selected if self.net.straggler_factor(c, rnd) > 1.0] if self.opts.emulate else [],
            "bytes_up": up1["wire_bytes"] - up0["wire_bytes"],
            "bytes_down": down1["wire_bytes"] - down0["wire_bytes"],
            "payload_up": up1["payload_bytes"] - up0["payload_bytes"],
            "payload_down": down1["payload_bytes"] - down0["payload_bytes"],
            "cum_bytes_up": up1["wire_bytes"],
            "cum_bytes_down": down1["wire_bytes"],
            "dropped_chunks": rs.dropped_chunks,
            "retransmitted_chunks": rs.retransmitted_chunks,
            "hole_chunks": rs.hole_chunks,
            "rejected_pushes": rs.rejected,
            "train_loss": agg.get("train_loss"),
            "aggregated": agg.get("aggregated", 0),
        }
        if self.evaluator is not None and ((rnd + 1) % self.cfg.eval_every == 0 or rnd == self.cfg.rounds - 1):
            self.last_eval = self.evaluator(self.global_vec)
            row["accuracy"], row["loss"] = self.last_eval
        row["wall_time"] = self.wall_before + time.monotonic() - self.t0
        history = self.history + [{"round": rnd, "accepted": accepted}]
        if self.opts.checkpoint:
            checkpoint.save(self.run_dir, {"round": rnd, "global": self.global_vec, "strategy": self.strategy.state_dict(),
                                           "history": history, "wall_time": row["wall_time"]})
        # Only after the checkpoint commits does the round exist: logs follow it, never lead it.
        with self.cv:
            self.history = history
            self.rounds_done = rnd + 1
            self.round_state = None
            self._blobs.clear()
            if self.rounds_done >= self.cfg.rounds:
                self.finished = True
            self.cv.notify_all()
        self.writer.write(row)
        with (self.run_dir / ACCEPTED_LOG).open("a") as f:
            f.write(json.dumps({"round": rnd, "accepted": accepted}) + "\n")
        log.info("round %d closed: accepted %s in %.2fs acc=%s", rnd, accepted, round_time, row.get("accuracy"))
        return row

    def _rewrite_accepted_log(self) -> None:
        (self.run_dir / ACCEPTED_LOG).write_text("".join(json.dumps(h) + "\n" for h in self.history))

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


def options_dict(opts: ServeOptions) -> dict[str, Any]:
    return asdict(opts)


__all__ = ["ParameterServer", "ServeOptions", "RoundState", "parse_encoded_header", "ACCEPTED_LOG"]
