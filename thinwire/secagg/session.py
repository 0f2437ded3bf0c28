"""The server's side of one secure-aggregation round as a live round runs it, served or simulated.

`SecAggSession` wraps the round's `SecAggServer` (the protocol math of `protocol.py`) with what a
round with real clients needs: who is still expected at each step, when a step is complete
(every expected client did its part; the others dropped out or timed out), and the bytes each
step moved. The steps, in order:

    advertise  every selected client sends its two public keys        -> the roster is fixed
    share      every roster member sends sealed shares + commitments   -> U1 is fixed
    input      masked inputs arrive (ordinary pushes, via the strategy) -> the engine closes: U2
    unmask     every client of U2 reveals its shares                    -> done: the sum

A client that leaves (heartbeat timeout, `drop`) is no longer waited for; a step still waiting
`timeout` seconds after it began goes on without the clients it waits for. Clients dropping out
after U1 is fixed (their masks are in the others' inputs) are the case double masking exists for:
their mask keys are rebuilt from t shares. Thread-safe: the gRPC handlers and the round engine
call in concurrently.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from thinwire.secagg import masks
from thinwire.secagg.protocol import Reveal, SecAggError, SecAggParams, SecAggServer

PHASES = ("advertise", "share", "input", "unmask", "done")


class StepError(SecAggError):
    """A message at the wrong time: not this client's step (yet, or any more), or sent twice."""
KEY_BYTES = 32                    # an X25519 public key
COMMIT_BYTES = 32                 # a SHA-256 share commitment
MIN_CLIENTS = 3                   # every client needs >= 2 neighbours


class SecAggSession:
    """One round's secure aggregation on the server: steps, expected clients, byte tallies."""

    def __init__(self, params: SecAggParams, clients: list[int], *, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.params = params
        self.server = SecAggServer(params)
        self.clients = sorted(clients)
        self.expected: set[int] = set(self.clients)
        self.phase = "advertise"
        self.u1: list[int] | None = None
        self.u2: list[int] | None = None
        self.graph: dict[int, list[int]] = {}
        self.reveals: dict[int, list[Reveal]] = {}
        self.dropped = {p: [] for p in PHASES[:4]}           # who left in which step
        self.error: str | None = None                        # the round cannot complete (too few clients)
        self.timeout = timeout
        self._clock = clock
        self._since = clock()
        self.cv = threading.Condition()
        self.bytes_up = {p: 0 for p in ("advertise", "share", "unmask")}        # key exchange, unmasking
        self.bytes_down = dict(self.bytes_up)

    # -- the steps ---------------------------------------------------------------------------
    def advertise(self, cid: int, c_public: bytes, s_public: bytes) -> None:
        with self.cv:
            self._expect(cid, "advertise")
            if cid in self.server.roster:
                raise StepError(f"client {cid}: public keys already advertised")
            if len(c_public) != KEY_BYTES or len(s_public) != KEY_BYTES:
                raise SecAggError(f"public keys: {len(c_public)} and {len(s_public)} bytes; allowed: {KEY_BYTES} each")
            self.server.take_advertise(cid, bytes(c_public), bytes(s_public))
            self.expected.discard(cid)
            self._advance()

    def roster(self) -> dict[int, tuple[bytes, bytes]] | None:
        """Every advertised client's (c, s) public keys, once the advertise step is complete."""
        with self.cv:
            return dict(self.server.roster) if self._at_least("share") else None

    def share(self, cid: int, sealed: dict[int, bytes], commits: dict[int, tuple[bytes, bytes]]) -> None:
        with self.cv:
            self._expect(cid, "share")
            peers = self.graph.get(cid)
            if peers is None or cid in self.server.u1:
                raise StepError(f"client {cid}: not in the roster or shares already sent")
            if sorted(sealed) != peers or sorted(commits) != peers:
                raise SecAggError(f"shares: for clients {sorted(sealed)}; allowed: exactly the neighbours {peers}")
            if any(len(s) != COMMIT_BYTES or len(b) != COMMIT_BYTES for s, b in commits.values()):
                raise SecAggError(f"commitments: {COMMIT_BYTES}-byte SHA-256 digests required")
            self.server.take_shares(cid, {v: bytes(c) for v, c in sealed.items()}, commits)
            self.expected.discard(cid)
            self._advance()

    def inbox(self, cid: int) -> tuple[dict[int, bytes], list[int]] | None:
        """The shares sealed for `cid` and U1, once the share step is complete."""
        with self.cv:
            if not self._at_least("input"):
                return None
            return self.server.inbox(cid), list(self.u1 or [])

    def take_masked(self, cid: int, data: bytes) -> None:
        """A masked input (the strategy hands over each accepted push); ValueError if refused."""
        with self.cv:
            if self.phase != "input":
                raise SecAggError(f"masked input from client {cid}: the round is in its {self.phase} step")
            if self.u1 is None or cid not in self.u1:
                raise SecAggError(f"masked input from client {cid}, which is not in U1 (it did not share keys)")
            if cid in self.server.masked:
                raise SecAggError(f"masked input from client {cid}: already received")
            self.server.take_masked(cid, data)

    def close_inputs(self) -> list[int]:
        """The engine closed the round: U2 = who sent a masked input; the unmask step begins."""
        with self.cv:
            if self.phase in ("advertise", "share"):         # never reached the inputs: nothing to unmask
                self._fail(f"the round closed during the {self.phase} step")
            elif self.phase == "input":
                self.u2 = self.server.survivors()
                self.dropped["input"] = sorted(set(self.u1 or []) - set(self.u2))
                self._enter("unmask", set(self.u2))
                if not self.u2:
                    self._fail("no masked input arrived")
                self._advance()
            return list(self.u2 or [])

    def survivors(self) -> list[int] | None:
        with self.cv:
            return list(self.u2) if self._at_least("unmask") and self.u2 is not None else None

    def reveal(self, cid: int, reveals: list[Reveal]) -> None:
        with self.cv:
            self._expect(cid, "unmask")
            if cid in self.reveals:
                raise StepError(f"client {cid}: shares already revealed")
            # the holder is the caller, whatever the message says
            self.reveals[cid] = [Reveal(cid, r.dealer, r.kind, bytes(r.share)) for r in reveals]
            self.expected.discard(cid)
            self._advance()

    def finish(self) -> np.ndarray:
        """The survivors' sum mod 2^k (uint64 residues). SecAggError when the round cannot complete."""
        with self.cv:
            if self.error is not None:
                raise SecAggError(self.error)
            if self.phase != "done":
                raise SecAggError(f"secure aggregation is still in its {self.phase} step")
            return self.server.unmask([r for rs in self.reveals.values() for r in rs])

    # -- clients that leave, steps that time out ----------------------------------------------
    def drop(self, cid: int) -> None:
        """`cid` is gone (left, or silent past the heartbeat timeout): stop waiting for it."""
        with self.cv:
            if cid in self.expected and self.phase in self.dropped:
                self.dropped[self.phase].append(cid)
                self.expected.discard(cid)
                self._advance()

    def tick(self) -> None:
        """Go on without the clients a step has waited for longer than `timeout` seconds."""
        with self.cv:
            if self.phase in ("advertise", "share", "unmask") and self.expected and \
                    self._clock() - self._since > self.timeout:
                self.dropped[self.phase] += sorted(self.expected)
                self.expected.clear()
                self._advance()

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def wait(self, timeout: float) -> None:
        with self.cv:
            if not self.done:
                self.cv.wait(timeout)

    # -- bookkeeping --------------------------------------------------------------------------
    def count(self, step: str, up: int, down: int) -> None:
        with self.cv:
            self.bytes_up[step] += up
            self.bytes_down[step] += down

    def message_bytes(self, direction: str) -> int:
        """Bytes of the key-exchange and unmask messages (masked inputs are pushes, counted apart)."""
        with self.cv:
            return sum((self.bytes_up if direction == "up" else self.bytes_down).values())

    def metrics(self) -> dict[str, float]:
        """The round's secure-aggregation figures for metrics.jsonl."""
        with self.cv:
            return {"secagg_u1": len(self.u1 or []), "secagg_u2": len(self.u2 or []),
                    "secagg_dropped_after_masking": len(self.dropped["input"]),
                    "secagg_dropped_keys": len(self.dropped["advertise"]) + len(self.dropped["share"]),
                    "secagg_refused_shares": self.server.refused_shares,
                    "secagg_key_bytes_up": sum(self.bytes_up.values()),
                    "secagg_key_bytes_down": sum(self.bytes_down.values()),
                    "secagg_masked_bytes": self.server.bytes_in["masked_input"]}

    def _expect(self, cid: int, phase: str) -> None:
        if self.phase != phase:
            raise StepError(f"client {cid}: the round is in its {self.phase} step, not {phase}")
        if cid not in self.expected:
            raise StepError(f"client {cid} takes no part in this step (not selected, dropped, or already done)")

    def _at_least(self, phase: str) -> bool:
        return self.error is None and PHASES.index(self.phase) >= PHASES.index(phase)

    def _enter(self, phase: str, expected: set[int]) -> None:
        self.phase, self.expected, self._since = phase, expected, self._clock()
        self.cv.notify_all()

    def _fail(self, why: str) -> None:
        self.error = self.error or why
        self._enter("done", set())

    def _advance(self) -> None:
        """Move on while the current step has nobody left to wait for."""
        while not self.expected and self.phase != "done":
            if self.phase == "advertise":
                roster = sorted(self.server.roster)
                if len(roster) < MIN_CLIENTS:
                    self._fail(f"{len(roster)} clients advertised keys; at least {MIN_CLIENTS} are needed")
                    return
                self.graph = masks.neighbours(roster, self.params.degree or len(roster), self.params.graph_seed)
                self._enter("share", set(roster))
            elif self.phase == "share":
                self.u1 = sorted(self.server.u1)
                if len(self.u1) < MIN_CLIENTS:
                    self._fail(f"{len(self.u1)} clients shared keys; at least {MIN_CLIENTS} are needed")
                    return
                self._enter("input", set(self.u1))
                return                                      # the engine decides when the inputs close
            elif self.phase == "input":
                return
            elif self.phase == "unmask":
                self._enter("done", set())
