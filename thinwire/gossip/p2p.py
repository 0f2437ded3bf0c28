"""Neighbour exchange over torch.distributed point-to-point: the communicator of decentralized peers.

`DistNeighbourhood` implements `thinwire.gossip.step.Neighbourhood` for one rank of the default process
group (gloo on CPU, NCCL on GPU): `exchange` sends one tensor to each graph neighbour and receives
theirs with isend/irecv (neighbours only, no collective), `all_mean` is the exact-averaging
baseline's collective. Byte payloads (serialised codec messages) may differ in length between
peers, so their lengths travel first. `all_mean` all-gathers and sums in rank order, the order the
single-process reference uses, so both paths give the same floats.
"""
from __future__ import annotations

from typing import Sequence

import torch


class DistNeighbourhood:
    def __init__(self, rank: int, world: int, neighbours: Sequence[int], weights: dict[int, float],
                 device: torch.device | str = "cpu") -> None:
        self.rank, self.world = int(rank), int(world)
        self.nbrs = sorted(int(j) for j in neighbours)
        self.weights = dict(weights)
        self.device = torch.device(device)

    def _swap(self, send: torch.Tensor, recv: dict[int, torch.Tensor]) -> None:
        import torch.distributed as dist
        if self.device.type == "cuda":  # NCCL wants the sends and receives of a step launched together
            ops = [dist.P2POp(dist.isend, send, j) for j in self.nbrs] + \
                  [dist.P2POp(dist.irecv, recv[j], j) for j in self.nbrs]
            reqs = dist.batch_isend_irecv(ops) if ops else []
        else:
            reqs = [dist.isend(send, j) for j in self.nbrs] + [dist.irecv(recv[j], j) for j in self.nbrs]
        for r in reqs:
            r.wait()

    def exchange(self, payload: torch.Tensor) -> dict[int, torch.Tensor]:
        """payload to every neighbour, theirs back: {neighbour rank: tensor}. uint8 results are on CPU."""
        p = payload.to(self.device).contiguous()
        if p.dtype == torch.uint8:  # serialised codec messages: lengths first
            n = torch.tensor([p.numel()], dtype=torch.int64, device=self.device)
            sizes = {j: torch.empty(1, dtype=torch.int64, device=self.device) for j in self.nbrs}
            self._swap(n, sizes)
            bufs = {j: torch.empty(int(sizes[j].item()), dtype=torch.uint8, device=self.device) for j in self.nbrs}
            self._swap(p, bufs)
            return {j: b.cpu() for j, b in bufs.items()}
        bufs = {j: torch.empty_like(p) for j in self.nbrs}
        self._swap(p, bufs)
        return bufs

    def all_mean(self, v: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        parts = [torch.empty_like(v) for _ in range(self.world)]
        dist.all_gather(parts, v.contiguous())
        out = torch.zeros_like(v)
        for t in parts:  # rank order, as the reference sums
            out.add_(t)
        return out.div_(self.world)


__all__ = ["DistNeighbourhood"]
