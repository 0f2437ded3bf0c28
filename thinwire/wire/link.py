"""The fault-injecting link: applies the run's NetworkModel (bandwidth, latency, lost chunks) to a
real gRPC stream, so a served run with `--emulate` sees the delays and losses the simulator draws."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from thinwire.faults.network import NetworkModel


# -- the emulated link ----------------------------------------------------------------------------
class Link:
    """One client's link under the run's NetworkModel, in wall time scaled by `time_scale`.

    With `model=None` (emulation off) nothing is delayed or dropped: only the real network acts.
    """

    def __init__(self, model: NetworkModel | None, client_id: int, direction: str = "up",
                 time_scale: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.model, self.client_id, self.direction = model, int(client_id), direction
        self.time_scale = float(time_scale)
        self._sleep = sleep
        if model is not None:
            prof = model.profile(self.client_id)
            self.bps = prof.up_bps if direction == "up" else prof.down_bps
            self.latency_s = prof.latency_s
        else:
            self.bps, self.latency_s = math.inf, 0.0
        self.delayed_s = 0.0

    @property
    def active(self) -> bool:
        return self.model is not None

    def wait(self, seconds: float) -> None:
        s = seconds * self.time_scale
        if self.model is not None and s > 0:
            self.delayed_s += s
            self._sleep(s)

    def airtime(self, nbytes: int) -> None:
        """Serialisation delay of `nbytes` at the link's bandwidth."""
        if self.model is not None:
            self.wait(nbytes * 8.0 / self.bps)

    def latency(self, trips: int = 1) -> None:
        self.wait(trips * self.latency_s)

    def lost(self, rnd: int, n_chunks: int, attempt: int) -> np.ndarray:
        if self.model is None:
            return np.zeros(n_chunks, dtype=bool)
        return self.model.lost_chunks(self.client_id, rnd, n_chunks, attempt, self.direction)
