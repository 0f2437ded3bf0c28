"""Decentralized algorithm steps (DProxSGT, CDProxSGT, ChocoSGD, all-reduce prox-SGD), spec cdproxsgt.md.

One implementation of each step, written for ONE peer: pure tensor math plus a `Neighbourhood`
communicator that exchanges a message with the graph neighbours (and, for the all-reduce
baseline, averages over everyone). The same `peer_step` runs in the single-process reference
(`LocalNetwork`: one thread per peer, in-memory mailboxes) and on Ray actors over
torch.distributed point-to-point (`thinwire.gossip.p2p.DistNeighbourhood`), so the two give the same numbers.

Compressed messages travel as the codec's serialised `Encoded` bytes; a receiver decodes them
with the sender's context (seed, step, sender rank), exactly as the sender decoded its own copy,
so the public copies x-hat / y-hat of a peer are identical at the peer and at its neighbours.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from thinwire.compression.base import Codec, Context, Encoded

from thinwire.errors import ConfigError, UserError
from thinwire.collective.reducer import parse_codec

ALGORITHMS = ("cdproxsgt", "dproxsgt", "choco", "allreduce")


def prox_l1(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """prox of threshold*||.||_1: the soft threshold sign(v) * max(|v| - threshold, 0)."""
    if threshold <= 0:
        return v
    return torch.sign(v) * torch.clamp(v.abs() - threshold, min=0.0)


def clip_norm(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """g scaled to norm max_norm when longer (0 = no clipping), as the authors clip at 10."""
    if max_norm <= 0:
        return g
    n = float(g.norm())
    return g * (max_norm / n) if n > max_norm else g


class Neighbourhood(Protocol):
    rank: int
    world: int
    weights: dict[int, float]  # w_ij for j in neighbours and j = rank

    def exchange(self, payload: torch.Tensor) -> dict[int, torch.Tensor]: ...

    def all_mean(self, v: torch.Tensor) -> torch.Tensor: ...


@dataclass
class AlgoConfig:
    algorithm: str = "cdproxsgt"
    lr: float = 0.01
    l1: float = 0.0
    gamma_x: float = 0.5
    gamma_y: float = 0.5
    codec: str = "topk:fraction=0.3"
    clip: float = 10.0
    seed: int = 0

    def validate(self) -> "AlgoConfig":
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("algorithm", f"unknown value {self.algorithm!r}", ", ".join(ALGORITHMS))
        for name in ("gamma_x", "gamma_y"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(name, f"{v} is out of range", "(0, 1]")
        if self.lr <= 0:
            raise ConfigError("lr", f"{self.lr} is out of range", "> 0")
        if self.l1 < 0:
            raise ConfigError("l1", f"{self.l1} is out of range", ">= 0")
        parse_codec(self.codec)
        return self


@dataclass
class PeerState:
    """One peer's vectors.

    `hats[name][j]` is the public copy (x-hat or y-hat) of peer j that this peer holds, for itself
    and every neighbour; the compressed methods keep them identical on both ends of each edge.
    `exchanges` lists the bytes this peer sent per neighbour in each exchange of the current step
    (-1 marks the all-reduce), for the simulated clock; `bytes_sent` sums them per receiver.
    """

    x: torch.Tensor
    y: torch.Tensor
    g_prev: torch.Tensor
    hats: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    g_last: torch.Tensor | None = None
    bytes_sent: dict[int, int] = field(default_factory=dict)  # per receiving neighbour
    exchanges: list[int] = field(default_factory=list)

    @classmethod
    def init(cls, x0: torch.Tensor) -> "PeerState":
        z = torch.zeros_like(x0)
        return cls(x0.clone(), z.clone(), z.clone())

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step reads, on CPU (per-epoch checkpoints): x, the tracker y, the last
        gradient, every public copy x-hat / y-hat held here, and the byte counters."""
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {"x": cpu(self.x), "y": cpu(self.y), "g_prev": cpu(self.g_prev), "g_last": cpu(self.g_last),
                "hats": {name: {int(j): cpu(t) for j, t in book.items()} for name, book in self.hats.items()},
                "bytes_sent": {int(j): int(b) for j, b in self.bytes_sent.items()},
                "exchanges": [int(b) for b in self.exchanges]}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any], device: torch.device | str = "cpu") -> "PeerState":
        dev = lambda t: None if t is None else t.to(device)  # noqa: E731
        return cls(dev(d["x"]), dev(d["y"]), dev(d["g_prev"]),
                   {name: {int(j): dev(t) for j, t in book.items()} for name, book in d["hats"].items()},
                   dev(d["g_last"]), {int(j): int(b) for j, b in d["bytes_sent"].items()},
                   [int(b) for b in d["exchanges"]])

    def hat(self, name: str, j: int) -> torch.Tensor:
        """Public copy `name` of peer j (zeros until j's first message, as in the spec)."""
        book = self.hats.setdefault(name, {})
        if j not in book:
            book[j] = torch.zeros_like(self.x)
        return book[j]


def mix(comm: Neighbourhood, v: torch.Tensor, state: PeerState) -> torch.Tensor:
    """sum_j w_ij v_j over self and neighbours (exact float32 messages), in rank order."""
    got = comm.exchange(v)
    _count(state, got.keys(), v.numel() * v.element_size())
    got[comm.rank] = v
    out = torch.zeros_like(v)
    for j in sorted(got):
        out.add_(got[j], alpha=comm.weights[j])
    return out


class Diverged(UserError):
    """The iterates left the finite floats: a step size or consensus step too large for this codec."""

    def __init__(self, what: str) -> None:
        super().__init__(f"training diverged ({what} is no longer finite); allowed: a smaller --lr, --gamma-x/"
                         "--gamma-y, or a contractive codec such as topk:fraction=F (unbiased codecs like qsgd "
                         "need gamma well below 1)")


def is_exact(codec: Codec) -> bool:
    """The identity codec at float32: decode(encode(u)) == u bit for bit."""
    return getattr(codec, "name", "") == "identity"


def compressed_gossip(comm: Neighbourhood, codec: Codec, v: torch.Tensor, name: str, gamma: float,
                      ctx_of: Callable[[int], Context], state: PeerState) -> torch.Tensor:
    """CHOCO step on v: send Q[v - hat_i]; every hat_j += Q[v_j - hat_j]; return v + gamma (W hat - hat_i).

    The return value is computed as sum_j (gamma w_ij) hat_j + (v - gamma hat_i), the same quantity
    (rows of W sum to 1) in a form that is exactly `mix(v)` when gamma = 1 and hat_i = v. With an
    exact codec (identity at float32) the new public copy hat + (v - hat) IS v, so it is set to v
    (the message carries v itself, same bytes) instead of rounding a + (b - a); hence CDProxSGT with
    the identity codec and gamma = 1 reproduces DProxSGT bit for bit.
    """
    me = comm.rank
    if not bool(torch.isfinite(v).all()):
        raise Diverged(name)
    exact = is_exact(codec) and v.dtype == torch.float32
    mine = state.hat(name, me)
    enc = codec.encode(v if exact else v - mine, ctx_of(me))
    q = codec.decode(enc, ctx_of(me), device=v.device).to(v.dtype)
    raw = enc.to_bytes()
    got = comm.exchange(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    _count(state, got.keys(), len(raw))
    for j, b in got.items():
        qj = codec.decode(Encoded.from_bytes(b.numpy().tobytes()), ctx_of(j), device=v.device).to(v.dtype)
        if exact:
            state.hat(name, j).copy_(qj)
        else:
            state.hat(name, j).add_(qj)
    if exact:
        mine.copy_(q)
    else:
        mine.add_(q)
    out = torch.zeros_like(v)
    for j in sorted([me, *got]):
        out.add_(state.hat(name, j), alpha=comm.weights[j] * gamma)
    return out.add_(v - gamma * mine)


def _count(state: PeerState, receivers: Any, nbytes: int) -> None:
    n = 0
    for j in receivers:
        state.bytes_sent[j] = state.bytes_sent.get(j, 0) + nbytes
        n += 1
    state.exchanges.append(nbytes if n else 0)


def peer_step(state: PeerState, grad_fn: Callable[[torch.Tensor], torch.Tensor], cfg: AlgoConfig,
              comm: Neighbourhood, step: int, codec: Codec | None = None) -> None:
    """One synchronous iteration of `cfg.algorithm` at this peer (spec §2, §3, §5)."""
    thr = cfg.lr * cfg.l1
    state.exchanges = []
    g = clip_norm(grad_fn(state.x), cfg.clip)
    state.g_last = g
    a = cfg.algorithm
    if a in ("dproxsgt", "cdproxsgt"):
        y_half = state.y + g - state.g_prev
        state.g_prev = g
        if a == "dproxsgt":
            state.y = mix(comm, y_half, state)
            x_half = prox_l1(state.x - cfg.lr * state.y, thr)
            state.x = mix(comm, x_half, state)
        else:
            assert codec is not None
            ctx_y = lambda j: Context(seed=cfg.seed, round=2 * step, client_id=j)  # noqa: E731
            ctx_x = lambda j: Context(seed=cfg.seed, round=2 * step + 1, client_id=j)  # noqa: E731
            state.y = compressed_gossip(comm, codec, y_half, "y", cfg.gamma_y, ctx_y, state)
            x_half = prox_l1(state.x - cfg.lr * state.y, thr)
            state.x = compressed_gossip(comm, codec, x_half, "x", cfg.gamma_x, ctx_x, state)
    elif a == "choco":
        assert codec is not None
        x_half = prox_l1(state.x - cfg.lr * g, thr)
        ctx = lambda j: Context(seed=cfg.seed, round=step, client_id=j)  # noqa: E731
        state.x = compressed_gossip(comm, codec, x_half, "x", cfg.gamma_x, ctx, state)
    elif a == "allreduce":
        x_half = prox_l1(state.x - cfg.lr * g, thr)
        state.x = comm.all_mean(x_half)
        nbytes = x_half.numel() * x_half.element_size()
        ring = 2 * (comm.world - 1) * nbytes // comm.world  # what a ring all-reduce sends per peer
        state.bytes_sent[-1] = state.bytes_sent.get(-1, 0) + ring  # -1: the collective, no single receiver
        state.exchanges.append(-nbytes)  # negative: an all-reduce of this many bytes
    else:  # pragma: no cover - validated
        raise ConfigError("algorithm", f"unknown value {a!r}", ", ".join(ALGORITHMS))


# -- the single-process reference network ------------------------------------------------------
class LocalNetwork:
    """n in-memory peers; `node(i)` is peer i's Neighbourhood. Each peer runs in its own thread."""

    def __init__(self, W: torch.Tensor, nbrs: Sequence[Sequence[int]]) -> None:
        self.n = W.shape[0]
        self.W, self.nbrs = W, [list(x) for x in nbrs]
        self.box: dict[int, torch.Tensor] = {}
        self.barrier = threading.Barrier(self.n)

    def node(self, i: int) -> "_LocalNode":
        return _LocalNode(self, i)


class _LocalNode:
    def __init__(self, net: LocalNetwork, rank: int) -> None:
        self.net, self.rank, self.world = net, rank, net.n
        self.weights = {j: float(net.W[rank, j]) for j in [rank, *net.nbrs[rank]]}

    def exchange(self, payload: torch.Tensor) -> dict[int, torch.Tensor]:
        net = self.net
        net.box[self.rank] = payload.clone()
        net.barrier.wait()
        got = {j: net.box[j].clone() for j in net.nbrs[self.rank]}
        net.barrier.wait()
        return got

    def all_mean(self, v: torch.Tensor) -> torch.Tensor:
        net = self.net
        net.box[self.rank] = v.clone()
        net.barrier.wait()
        out = torch.zeros_like(v)
        for j in range(net.n):  # rank order, as the dist path sums
            out.add_(net.box[j])
        net.barrier.wait()
        return out.div_(net.n)


def run_reference(states: Sequence[PeerState], grad_fns: Sequence[Callable[[int, torch.Tensor], torch.Tensor]],
                  cfg: AlgoConfig, W: torch.Tensor, nbrs: Sequence[Sequence[int]], steps: int,
                  after_step: Callable[[int], None] | None = None, start: int = 0) -> None:
    """Run `steps` iterations of every peer in one process (threads in lockstep)."""
    net = LocalNetwork(W, nbrs)
    codec = parse_codec(cfg.codec) if cfg.algorithm in ("cdproxsgt", "choco") else None
    errors: list[BaseException] = []
    sync = threading.Barrier(len(states), action=None)

    def worker(i: int) -> None:
        node = net.node(i)
        try:
            for t in range(start, start + steps):
                peer_step(states[i], lambda x, t=t: grad_fns[i](t, x), cfg, node, t, codec)
                sync.wait()
                if after_step is not None and i == 0:
                    after_step(t)
                sync.wait()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)
            net.barrier.abort()
            sync.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(states))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]


__all__ = ["ALGORITHMS", "AlgoConfig", "PeerState", "prox_l1", "clip_norm", "mix", "is_exact", "Diverged", "compressed_gossip", "peer_step",
           "LocalNetwork", "run_reference"]
