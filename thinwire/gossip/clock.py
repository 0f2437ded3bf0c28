"""Simulated time of synchronous gossip: each exchange waits for the slowest neighbour's message.

Peer k's compute per step comes from the fault model (`NetworkModel.compute_time`: profile speed
times the straggler factor of that step); a message from j to i takes j's latency plus
bytes / min(uplink of j, downlink of i). After computing, every exchange of the step is a barrier
among neighbours only:

    T_i <- max over j in {i} + N(i) of (T_j + send_time(j -> i))

so a straggler delays its neighbours at once and the rest of the graph a hop per exchange, which
is the point of decentralized training. An all-reduce (the exact-averaging baseline) is a global
barrier followed by a ring all-reduce: 2 (n - 1) transfers of bytes / n through the slowest link.
"""
from __future__ import annotations

from typing import Sequence

from thinwire.faults.network import NetworkModel


class GossipClock:
    def __init__(self, net: NetworkModel, nbrs: Sequence[Sequence[int]], batch_size: int) -> None:
        self.net, self.nbrs, self.batch = net, [list(x) for x in nbrs], int(batch_size)
        self.n = len(self.nbrs)
        self.time = [0.0] * self.n
        self.compute_s = 0.0  # sum over steps of the slowest peer's compute (for reporting)

    def send_time(self, j: int, i: int, nbytes: int) -> float:
        pj, pi = self.net.profile(j), self.net.profile(i)
        return pj.latency_s + nbytes * 8.0 / min(pj.up_bps, pi.down_bps)

    def step(self, t: int, exchanges: Sequence[Sequence[int]]) -> float:
        """Advance by step t given each peer's per-exchange message sizes; returns the new max time."""
        comp = [self.net.compute_time(k, t, self.batch) for k in range(self.n)]
        self.compute_s += max(comp)
        T = [self.time[k] + comp[k] for k in range(self.n)]
        for e in range(max((len(x) for x in exchanges), default=0)):
            sizes = [x[e] for x in exchanges]
            if sizes[0] < 0:  # all-reduce of -size bytes
                per = -sizes[0] / self.n
                hop = max(self.send_time(j, (j + 1) % self.n, int(per)) for j in range(self.n))
                end = max(T) + 2 * (self.n - 1) * hop
                T = [end] * self.n
            else:
                T = [max([T[i]] + [T[j] + self.send_time(j, i, sizes[j]) for j in self.nbrs[i]])
                     for i in range(self.n)]
        self.time = T
        return max(T)


__all__ = ["GossipClock"]
