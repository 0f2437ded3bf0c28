"""A served client's side of secure aggregation: the four steps of thinwire.secagg over the
`SecAgg` RPC, around the one push of the masked input.

    advertise keys -> (poll) roster -> share keys -> (poll) shares + U1
    -> train, quantize, mask (the caller) -> push the masked input -> (poll) U2 -> reveal shares

Polls answer ready=false until the server has every client's message for that step. A reply with
abandoned=true (the round went on without this client: too slow, or the round failed) ends the
protocol for this client, as does the fleet stopping.
"""
from __future__ import annotations

import threading
import time

from thinwire.protos import thinwire_pb2 as pb2
from thinwire.secagg import wire
from thinwire.secagg.protocol import Reveal
from thinwire.wire.format import GRPC_FRAME


class Abandoned(Exception):
    """The server's round went on without this client (its reply says why)."""


class SecAggLink:
    def __init__(self, conn, cid: int, rnd: int, stop: threading.Event, max_wait: float = 600.0) -> None:
        self.conn, self.cid, self.rnd, self.stop, self.max_wait = conn, cid, rnd, stop, max_wait

    def _call(self, req):
        reply = self.conn.call("SecAgg", req, self.cid)
        for counter, msg in ((self.conn.up, req), (self.conn.down, reply)):   # counted as the server counts them
            counter.add(msg.ByteSize() + GRPC_FRAME, msg.ByteSize() + GRPC_FRAME)
        if reply.abandoned:
            raise Abandoned(reply.message)
        return reply

    def _poll(self, step: str):
        t_end = time.monotonic() + self.max_wait
        while not self.stop.is_set():
            reply = self._call(wire.request(pb2, self.cid, self.rnd, step))
            if reply.ready:
                return reply
            if time.monotonic() > t_end:
                raise Abandoned(f"no answer to {step} within {self.max_wait:g} s")
            self.stop.wait(max(reply.retry_after_s, 0.05))
        raise Abandoned("the client is stopping")

    def advertise(self, c_public: bytes, s_public: bytes) -> None:
        self._call(wire.advertise_request(pb2, self.cid, self.rnd, c_public, s_public))

    def roster(self) -> dict[int, tuple[bytes, bytes]]:
        return {k.client_id: (bytes(k.c_public), bytes(k.s_public)) for k in self._poll("ROSTER").roster}

    def share(self, sealed: dict[int, bytes], commits: dict[int, tuple[bytes, bytes]]) -> None:
        self._call(wire.share_request(pb2, self.cid, self.rnd, sealed, commits))

    def inbox(self) -> tuple[dict[int, bytes], list[int]]:
        reply = self._poll("SHARES")
        return {s.peer: bytes(s.sealed) for s in reply.shares}, list(reply.clients)

    def survivors(self) -> list[int]:
        return list(self._poll("SURVIVORS").clients)

    def reveal(self, reveals: list[Reveal]) -> None:
        self._call(wire.reveal_request(pb2, self.cid, self.rnd, reveals))
