"""Pushes of a served run: each is admitted against the open round, reassembled chunk by chunk
within a byte budget, verified, then handed to the round engine as an `Arrival`; the pushing gRPC
thread waits for the engine's verdict (accepted, late, refused) before it answers, and only then
recycles the buffer (decoding may be zero-copy).

Within a round, pushes are idempotent per (round, client, job): a replayed chunk is ignored, a
partial push is resumed only by an identical header, a second push of an answered update gets
ALREADY_EXISTS. The ingest reads the server's open round and answered set under the server's lock.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from thinwire.server.rounds import Arrival
from thinwire.task import Task, result_header
from thinwire.wire.format import WireError
from thinwire.wire.reassembly import BufferBudget, Reassembly

if TYPE_CHECKING:  # pragma: no cover
    from thinwire.server.app import ParameterServer

VERDICT_WAIT = 0.25          # how often a pushing thread waiting for the engine checks for a stop


class PushIngest:
    """Reassembly buffers of pushes in flight, their byte budget, and the hand-over to the engine."""

    def __init__(self, ps: "ParameterServer", *, max_update_bytes: int, budget: BufferBudget, holes_ok: bool,
                 push_wait: float) -> None:
        self.ps = ps
        self.max_update_bytes = max_update_bytes
        self.budget = budget
        self.holes_ok = holes_ok
        self.push_wait = push_wait
        self.partial: dict[tuple[int, int], Reassembly] = {}
        self.busy: set[tuple[int, int]] = set()

    def reserve(self, nbytes: int, chunk_size: int) -> int:
        """Reassembly budget for a push the client declared (`nbytes` Encoded bytes), taken before
        its first message is read; returns the amount, which `begin_push` takes over."""
        if nbytes > self.max_update_bytes:
            raise WireError("RESOURCE_EXHAUSTED",
                            f"update of {nbytes} bytes exceeds the server limit of {self.max_update_bytes} bytes")
        cost = Reassembly.charge(nbytes, chunk_size)
        if not self.budget.acquire(cost, self.push_wait, Reassembly.buffer_bytes(nbytes)):
            raise WireError("UNAVAILABLE", f"server busy: no reassembly buffer free within {self.push_wait:g} s; "
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
            if not self.budget.acquire(ra.cost, self.push_wait, ra.buffer_size):
                self._release(key)
                raise WireError("UNAVAILABLE", f"server busy: no reassembly buffer free within "
                                f"{self.push_wait:g} s; retry later")
        ra.attach(self.budget.take(ra.buffer_size))
        with self.ps.lock:
            self.partial[key] = ra
        return ra

    def _task_of(self, rnd: int, cid: int) -> Task | None:
        """The task a push for (rnd, cid) answers: this round's, or an earlier round's within the
        strategy's delay window (delayed jobs)."""
        rs = self.ps.round_state
        if rs is not None and rnd == rs.round:
            return rs.tasks.get(cid)
        strategy = self.ps.engine.strategy
        if strategy.spans_steps:       # asynchronous: an earlier step's task is due until it delivers
            return self.ps.engine.tasks_by_round.get(rnd, {}).get(cid) if strategy.in_flight().get(cid) == rnd else None
        if rs is not None and rs.open and 0 < rs.round - rnd <= self.ps.engine.strategy.max_delay:
            return self.ps.engine.tasks_by_round.get(rnd, {}).get(cid)
        return None

    def _admit_push(self, rnd: int, cid: int, header) -> tuple[tuple[int, int], Reassembly | None]:
        """The protocol checks of a push header; marks (round, client) busy. Returns the key and the
        partial push it resumes, if any."""
        self.ps.members.check(cid)
        key = (rnd, cid)
        with self.ps.lock:
            rs = self.ps.round_state
            if self.ps.finished:
                raise WireError("FAILED_PRECONDITION", "the run is finished; no more updates are taken")
            prev = self.ps.answered.get(key)
            if prev is not None:
                raise WireError("ALREADY_EXISTS", f"update of client {cid} for round {rnd} was already received ({prev})")
            task = self._task_of(rnd, cid)
            if task is None:
                cur = self.ps.current_round
                if rs is not None and rnd == rs.round:
                    raise WireError("FAILED_PRECONDITION", f"client {cid} was not selected for round {rnd}")
                what = "is closed" if rnd < cur else "has not started"
                raise WireError("FAILED_PRECONDITION", f"round {rnd} {what} (current round {cur})")
            if not self.ps.engine.strategy.spans_steps and not rs.open:
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
                allowed = {self.ps.codec.name, "identity", *self.ps.engine.strategy.result_codecs}
                bad = [c for _, c, _, _ in h["items"] if c not in allowed]
                if bad:
                    raise ValueError(f"update codec {bad[0]!r} does not match the run's codec {self.ps.codec.name!r}")
                self.ps.engine.strategy.check_header(task, h["items"], self.ps.numel)
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
        with self.ps.lock:
            self.busy.discard(key)

    def _drop_partial(self, key: tuple[int, int]) -> None:
        with self.ps.lock:
            ra = self.partial.pop(key, None)
        if ra is not None:
            self.budget.release(ra.cost, ra.detach())

    def abort_push(self, key: tuple[int, int]) -> None:
        """A push failed validation: forget its buffer, count the rejection."""
        self._drop_partial(key)
        self._release(key)
        with self.ps.lock:
            self.ps.rejected += 1
            if self.ps.round_state is not None and self.ps.round_state.round == key[0]:
                self.ps.round_state.rejected += 1

    def finish_push(self, key: tuple[int, int], ra: Reassembly, header, retransmitted: int) -> tuple[str, list[int], int]:
        """After a push stream ended: hand a complete result to the engine and wait for its verdict,
        or keep waiting for missing chunks. Returns (result, missing, holes) with result in
        accepted / incomplete / late; a refusal raises WireError(INVALID_ARGUMENT)."""
        rnd, cid = key
        try:
            missing = ra.missing()
            with self.ps.lock:
                rs = self.ps.round_state
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
            with self.ps.lock:
                self.partial.pop(key, None)
                task = self._task_of(rnd, cid)
                still_open = task is not None and (self.ps.engine.strategy.spans_steps or (
                    self.ps.round_state is not None and self.ps.round_state.open))
            try:
                if not still_open:
                    verdict, message = "late", ""
                else:
                    verdict, message = self._hand_over(rnd, cid, task, header, ra, holes)
            finally:
                self.budget.release(ra.cost, ra.detach())
            if verdict == "refused":
                raise WireError("INVALID_ARGUMENT", message)
            with self.ps.lock:
                self.ps.answered[key] = verdict
                rs = self.ps.round_state
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
            self.ps.events.put(Arrival(client_id=cid, round=rnd, job=task.job_id, payload=payload, scalars=scalars,
                                    time=self.ps.now(), holes=holes, reply=reply))
            while not done.wait(VERDICT_WAIT):
                if self.ps.stop_event.is_set():
                    raise WireError("UNAVAILABLE", "server stopping; push again after it restarts")
        finally:
            payload.release()
        return verdict[0], verdict[1]

    def drop_round(self, rnd: int) -> None:
        """Forget the partial pushes of a closed round (not those whose stream is still running)."""
        with self.ps.lock:
            for key in [k for k in self.partial if k[0] == rnd and k not in self.busy]:
                self._drop_partial(key)
