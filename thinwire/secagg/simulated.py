"""The clients' side of a secure-aggregation round in a simulation: each selected client's
`SecAggClient`, stepped against the round's `SecAggSession` exactly as a served client steps it
over gRPC, with the bytes (and the emulated link time) each of its messages would take.

The simulator's workers compute every client's clear integer input; this object masks it before
the round engine (and so the strategy) sees anything: the server side of a simulated round holds
what a served one holds.
"""
from __future__ import annotations

from dataclasses import replace

from thinwire.protos import thinwire_pb2 as pb2
from thinwire.secagg import wire
from thinwire.secagg.protocol import SecAggClient
from thinwire.secagg.session import SecAggSession


class SimulatedClients:
    def __init__(self, session: SecAggSession, rnd: int, link_time=lambda cid, up, down: 0.0) -> None:
        """Run the key exchange (advertise, share keys) for every client of `session`.
        `link_time(cid, up_bytes, down_bytes)` gives the seconds a message pair takes on the
        client's emulated link: `key_time[cid]` is what the exchange adds before its upload."""
        self.session, self.rnd, self.link_time = session, rnd, link_time
        self.clients = {c: SecAggClient(c, session.params) for c in session.clients}
        self.key_time = {c: 0.0 for c in session.clients}
        self.unmask_time = 0.0
        self.inboxes: dict[int, tuple[dict[int, bytes], list[int]]] = {}
        sent = {}
        for c, client in self.clients.items():
            req = wire.advertise_request(pb2, c, rnd, *client.advertise())
            session.advertise(c, req.c_public, req.s_public)
            sent[c] = wire.size(req)
        roster = session.roster()
        if roster is None:                    # too few clients: the session says why at finish
            return
        reply = wire.size(wire.roster_reply(pb2, roster))
        for c in self.clients:
            self._count(c, "advertise", sent[c], reply)
        for c, client in self.clients.items():
            sealed, commits = client.share_keys(roster)
            req = wire.share_request(pb2, c, rnd, sealed, commits)
            session.share(c, *wire.parse_shares(req))
            sent[c] = wire.size(req)
        for c in self.clients:
            got = session.inbox(c)
            if got is None:
                return
            self.inboxes[c] = got
            self._count(c, "share", sent[c], wire.size(wire.shares_reply(pb2, *got)))

    def masked(self, result):
        """Client result `result` with its clear integers replaced by the masked input it pushes."""
        inbox, u1 = self.inboxes[result.client_id]
        y = self.clients[result.client_id].masked_input(wire.clear_input(result.payload), inbox, u1)
        enc = wire.masked_payload(y, self.session.params)
        return replace(result, payload=enc.to_bytes(), header_size=enc.header_size)

    def unmask(self) -> None:
        """Step 4 for every survivor the session names (after the engine closed the round)."""
        u2 = self.session.survivors()
        if u2 is None:
            return
        reply = wire.size(wire.survivors_reply(pb2, u2))
        for c in u2:
            req = wire.reveal_request(pb2, c, self.rnd, self.clients[c].unmask(u2))
            self.session.reveal(c, wire.parse_reveals(c, req))
            self.unmask_time = max(self.unmask_time, self._count(c, "unmask", wire.size(req), reply))

    def _count(self, cid: int, step: str, up: int, down: int) -> float:
        self.session.count(step, up, down)
        t = self.link_time(cid, up, down)
        if step != "unmask":
            self.key_time[cid] += t
        return t
