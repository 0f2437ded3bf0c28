"""Graphs for decentralized training and their symmetric doubly stochastic mixing matrices.

`graph(spec, n)` parses ring | torus | complete | erdos-renyi:p | path/to/edges.csv into a set of
undirected edges; `mixing(edges, n, rule)` gives W with w_ij > 0 only on edges and the diagonal:
Metropolis-Hastings weights w_ij = 1 / (1 + max(deg_i, deg_j)) (symmetric and doubly stochastic
on any graph), or "uniform-ring" (1/3 self + 1/3 each neighbour, the CDProxSGT paper's ring).
`spectral_gap(W)` = 1 - ||W - 11^T/n||_2, which sets how fast gossip reaches consensus.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from thinwire.errors import ConfigError

TOPOLOGIES = "ring, torus, complete, erdos-renyi:P or a CSV file of edges (i,j per line)"
MIXING_RULES = ("metropolis", "uniform-ring")

Edge = tuple[int, int]


def graph(spec: str, n: int, seed: int = 0) -> set[Edge]:
    """Undirected edges (i < j) of the named graph on n nodes; a one-line ConfigError when bad."""
    if n < 1:
        raise ConfigError("workers", f"{n} peers", "at least 1")
    s = str(spec).strip()
    if s == "ring":
        edges = {tuple(sorted((i, (i + 1) % n))) for i in range(n)} if n > 1 else set()
        return {e for e in edges if e[0] != e[1]}
    if s == "complete":
        return {(i, j) for i in range(n) for j in range(i + 1, n)}
    if s == "torus":
        r = int(math.isqrt(n))
        while r > 1 and n % r:
            r -= 1
        c = n // r
        if r < 2:
            raise ConfigError("topology", f"torus needs a composite number of peers, got {n}", TOPOLOGIES)
        edges = set()
        for a in range(r):
            for b in range(c):
                i = a * c + b
                for j in (a * c + (b + 1) % c, ((a + 1) % r) * c + b):
                    if i != j:
                        edges.add(tuple(sorted((i, j))))
        return edges
    if s.startswith("erdos-renyi"):
        _, _, p = s.partition(":")
        try:
            prob = float(p)
        except ValueError:
            raise ConfigError("topology", f"bad edge probability in {s!r}", "erdos-renyi:P with P in (0, 1]") from None
        if not 0 < prob <= 1:
            raise ConfigError("topology", f"edge probability {prob} out of range", "erdos-renyi:P with P in (0, 1]")
        g = torch.Generator().manual_seed(seed)
        for _ in range(1000):  # redraw until connected
            u = torch.rand(n, n, generator=g)
            edges = {(i, j) for i in range(n) for j in range(i + 1, n) if u[i, j] < prob}
            if connected(edges, n):
                return edges
        raise ConfigError("topology", f"erdos-renyi:{prob} gave no connected graph on {n} peers", "a larger P")
    if s.endswith(".csv") or Path(s).exists():
        path = Path(s)
        if not path.exists():
            raise ConfigError("topology", f"edge file {s!r} does not exist", TOPOLOGIES)
        edges = set()
        with open(path, newline="") as fh:
            for k, row in enumerate(csv.reader(fh)):
                if not row or row[0].strip().startswith("#"):
                    continue
                try:
                    i, j = int(row[0]), int(row[1])
                except (ValueError, IndexError):
                    if k == 0:
                        continue  # header line
                    raise ConfigError("topology", f"{s}: line {k + 1} is not 'i,j'", "integer node ids") from None
                if not (0 <= i < n and 0 <= j < n):
                    raise ConfigError("topology", f"{s}: edge ({i},{j}) outside 0..{n - 1}", f"node ids < {n}")
                if i != j:
                    edges.add(tuple(sorted((i, j))))
        if not connected(edges, n):
            raise ConfigError("topology", f"{s}: the graph is not connected", "a connected graph")
        return edges
    raise ConfigError("topology", f"unknown value {s!r}", TOPOLOGIES)


def connected(edges: set[Edge], n: int) -> bool:
    seen, stack = {0}, [0]
    nbrs = neighbours(edges, n)
    while stack:
        for j in nbrs[stack.pop()]:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return len(seen) == n


def neighbours(edges: set[Edge], n: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n)]
    for i, j in sorted(edges):
        out[i].append(j)
        out[j].append(i)
    return [sorted(x) for x in out]


def mixing(edges: set[Edge], n: int, rule: str = "metropolis") -> torch.Tensor:
    """Symmetric doubly stochastic W (float64) supported on the edges and the diagonal."""
    if rule not in MIXING_RULES:
        raise ConfigError("mixing", f"unknown value {rule!r}", ", ".join(MIXING_RULES))
    nb = neighbours(edges, n)
    W = torch.zeros(n, n, dtype=torch.float64)
    if rule == "uniform-ring":
        if any(len(x) != 2 for x in nb) and n > 2:
            raise ConfigError("mixing", "uniform-ring needs every peer to have exactly 2 neighbours", "metropolis")
        for i in range(n):
            for j in nb[i]:
                W[i, j] = 1.0 / 3.0
    else:
        deg = [len(x) for x in nb]
        for i, j in edges:
            W[i, j] = W[j, i] = 1.0 / (1 + max(deg[i], deg[j]))
    W += torch.diag(1.0 - W.sum(1))
    return W


def spectral_gap(W: torch.Tensor) -> float:
    """1 - ||W - 11^T/n||_2 (1 for the complete average, 0 for a disconnected graph)."""
    n = W.shape[0]
    rho = float(torch.linalg.matrix_norm(W - torch.full_like(W, 1.0 / n), ord=2))
    return 1.0 - rho


__all__ = ["graph", "mixing", "neighbours", "connected", "spectral_gap", "TOPOLOGIES", "MIXING_RULES"]
