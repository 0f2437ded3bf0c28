"""The live client registry of a served run: who joined, who heartbeats, who left.

A client is alive while it heartbeats within `heartbeat_timeout`; the round engine selects only
live clients, and a selected client that goes silent stops holding its round open. The registry
shares the parameter server's condition variable, so a join or leave wakes a round waiting for
enough clients.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from thinwire.wire.format import WireError

log = logging.getLogger("thinwire.server")


@dataclass
class ClientInfo:
    last_seen: float
    hostname: str = ""
    left: bool = False


class Membership:
    """Joins, heartbeats (one or many ids per call) and leaves of the run's clients 0..num_clients-1."""

    def __init__(self, num_clients: int, heartbeat_timeout: float, cv: threading.Condition) -> None:
        self.num_clients = int(num_clients)
        self.heartbeat_timeout = heartbeat_timeout
        self.cv = cv
        self.clients: dict[int, ClientInfo] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def check(self, cid: int) -> None:
        if cid < 0 or cid >= self.num_clients:
            raise WireError("INVALID_ARGUMENT", f"client id {cid} out of range 0..{self.num_clients - 1}")

    def join(self, cid: int, hostname: str) -> None:
        self.check(cid)
        with self.cv:
            self.clients[cid] = ClientInfo(time.monotonic(), hostname)
            self.cv.notify_all()
        log.info("client %d joined from %s", cid, hostname or "?")

    def touch(self, cid: int) -> bool:
        with self.cv:
            info = self.clients.get(cid)
            if info is None or info.left:
                return False
            info.last_seen = time.monotonic()
            return True

    def touch_many(self, ids: list[int]) -> list[int]:
        """Heartbeat of many clients at once (one lock, one clock read); returns the unknown ids."""
        now = time.monotonic()
        unknown = []
        with self.cv:
            clients = self.clients
            for cid in ids:
                info = clients.get(cid)
                if info is None or info.left:
                    unknown.append(cid)
                else:
                    info.last_seen = now
        return unknown

    def is_alive(self, cid: int, now: float) -> bool:
        info = self.clients.get(cid)
        return info is not None and not info.left and now - info.last_seen <= self.heartbeat_timeout

    def leave(self, cid: int) -> None:
        with self.cv:
            info = self.clients.get(cid)
            if info is not None:
                info.left = True
            self.cv.notify_all()

    def alive(self) -> list[int]:
        now = time.monotonic()
        with self.cv:
            return sorted(c for c, i in self.clients.items()
                          if not i.left and now - i.last_seen <= self.heartbeat_timeout)
