"""One secure-aggregation round: client and server state, and an in-process driver (`run_round`).

    1 advertise   client -> server: two X25519 public keys (c: share encryption, s: masks)
    2 share keys  client -> server -> neighbour: Shamir shares of s_sk and of the self-mask seed b,
                  each sealed with AES-GCM for its receiver, plus SHA-256 commitments the server keeps
    3 masked input client -> server: y = x + PRG(b) + sum_v +-PRG(s_uv)  mod 2^k, bit-packed
    4 unmask      server -> survivors: who sent y (U2); each survivor opens its sealed shares and
                  reveals, per neighbour dealer, the b share (dealer in U2) or the s_sk share
                  (dealer dropped after step 2), never both; the server checks every revealed share
                  against the dealer's commitment, refuses the rest, rebuilds the secrets from t
                  good shares, checks a rebuilt s_sk against the advertised s_pk, and removes the
                  masks: the sum of the survivors' x, exactly, mod 2^k.

Threat model (docs/trust.md): an honest-but-curious server and clients that may drop out at any
step; up to t - 1 colluding neighbours of a client learn nothing of its secrets. A client's
secret is rebuilt while at least t = floor(degree / 2) + 1 of its neighbours reach step 4: with
the complete graph over n clients that tolerates n - 1 - t dropouts among each client's peers.
Messages are bytes and plain ints, so the served mode carries them over gRPC unchanged.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from thinwire.secagg import masks, shamir
from thinwire.secagg.crypto import KeyPair, agree, digest, open_sealed, seal


class SecAggError(ValueError):
    """A round that cannot complete (too few shares, too few survivors), or a refused message."""


@dataclass(frozen=True)
class SecAggParams:
    count: int                    # integers per input vector
    bits: int = 32                # modulus 2^bits
    degree: int = 0               # neighbours per client (0 or >= n - 1: complete graph)
    context: bytes = b""          # binds every key and share to this run and round
    graph_seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 62:
            raise SecAggError(f"bits: {self.bits}; allowed: 1..62")
        if self.count < 1:
            raise SecAggError(f"count: {self.count}; allowed: >= 1")


@dataclass
class Reveal:
    """One share a survivor reveals in step 4: dealer's secret `kind` ("s" or "b")."""
    holder: int
    dealer: int
    kind: str
    share: bytes


@dataclass
class SecAggClient:
    cid: int
    params: SecAggParams
    c: KeyPair = field(default_factory=KeyPair)
    s: KeyPair = field(default_factory=KeyPair)
    b: bytes = field(default_factory=lambda: secrets.token_bytes(shamir.SECRET_BYTES))
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    peers: list[int] = field(default_factory=list)
    inbox: dict[int, bytes] = field(default_factory=dict)       # dealer -> sealed shares for me
    u1: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)           # dealers whose share failed its tag

    # step 1
    def advertise(self) -> tuple[bytes, bytes]:
        return self.c.public, self.s.public

    def _key(self, sender: int, receiver: int, peer_public: bytes) -> bytes:
        info = b"thinwire-secagg/enc|" + self.params.context + f"|{sender}->{receiver}".encode()
        return agree(self.c.private, peer_public, info)

    def _aad(self, sender: int, receiver: int) -> bytes:
        return self.params.context + f"|share|{sender}->{receiver}".encode()

    # step 2
    def share_keys(self, roster: dict[int, tuple[bytes, bytes]]) -> tuple[dict[int, bytes], dict[int, tuple[bytes, bytes]]]:
        """Sealed shares for each neighbour, and commitments (digests of each share) for the server."""
        self.roster = dict(roster)
        graph = masks.neighbours(sorted(roster), self.params.degree or len(roster), self.params.graph_seed)
        self.peers = graph[self.cid]
        t = masks.threshold(len(self.peers))
        if len(self.peers) < 2:
            raise SecAggError(f"client {self.cid}: {len(self.peers)} neighbours; at least 2 are needed")
        s_shares = shamir.split(self.s.secret, len(self.peers), t)
        b_shares = shamir.split(self.b, len(self.peers), t)
        sealed, commits = {}, {}
        for (x, ys), (_, yb), v in zip(s_shares, b_shares, self.peers):
            sb, bb = shamir.share_bytes(ys), shamir.share_bytes(yb)
            body = x.to_bytes(2, "big") + sb + bb
            sealed[v] = seal(self._key(self.cid, v, roster[v][0]), body, self._aad(self.cid, v))
            commits[v] = (digest(self.params.context, b"s", bytes([x >> 8, x & 255]), sb),
                          digest(self.params.context, b"b", bytes([x >> 8, x & 255]), bb))
        return sealed, commits

    # step 3
    def masked_input(self, x: np.ndarray, inbox: dict[int, bytes], u1: list[int]) -> bytes:
        """y = x + PRG(b) + the pairwise masks with the neighbours that reached step 2, bit-packed."""
        p = self.params
        if x.shape != (p.count,):
            raise SecAggError(f"input: shape {x.shape}, expected ({p.count},)")
        self.inbox, self.u1 = dict(inbox), sorted(u1)
        y = masks.add_mod(masks.wrap(x, p.bits), masks.prg(self.b, p.count, p.bits), p.bits)
        for v in self.peers:
            if v in self.u1:
                y = masks.add_mod(y, masks.pair_mask(self.cid, v, self._mask_seed(v), p.count, p.bits), p.bits)
        return masks.pack_bits(y, p.bits)

    def _mask_seed(self, v: int) -> bytes:
        lo, hi = min(self.cid, v), max(self.cid, v)
        return agree(self.s.private, self.roster[v][1], b"thinwire-secagg/mask|" + self.params.context +
                     f"|{lo}-{hi}".encode())

    # step 4
    def unmask(self, u2: list[int]) -> list[Reveal]:
        """Per neighbour dealer in U1: its b share if it sent its input, its s_sk share if not."""
        survivors = set(u2)
        if self.cid not in survivors:
            raise SecAggError(f"client {self.cid}: asked to unmask a round it did not complete")
        out = []
        for u in self.peers:
            if u not in self.u1 or u not in self.inbox:
                continue
            try:
                body = open_sealed(self._key(u, self.cid, self.roster[u][0]), self.inbox[u], self._aad(u, self.cid))
            except ValueError:
                self.refused.append(u)
                continue
            x, sb, bb = body[:2], body[2:2 + shamir.SHARE_BYTES], body[2 + shamir.SHARE_BYTES:]
            if u in survivors:
                out.append(Reveal(self.cid, u, "b", x + bb))
            else:
                out.append(Reveal(self.cid, u, "s", x + sb))
        return out


class SecAggServer:
    """What the server holds in one round: public keys, share commitments, the sealed shares it
    routes, masked inputs and revealed shares. Never an individual input."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.roster: dict[int, tuple[bytes, bytes]] = {}
        self.sealed: dict[int, dict[int, bytes]] = {}           # receiver -> dealer -> sealed shares
        self.commits: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.refused_shares = 0
        self.bytes_in = {"advertise": 0, "share_keys": 0, "masked_input": 0, "unmask": 0}
        self.u1: list[int] = []

    def take_advertise(self, cid: int, c_pk: bytes, s_pk: bytes) -> None:
        self.roster[cid] = (c_pk, s_pk)
        self.bytes_in["advertise"] += len(c_pk) + len(s_pk)

    def take_shares(self, cid: int, sealed: dict[int, bytes], commits: dict[int, tuple[bytes, bytes]]) -> None:
        for v, ct in sealed.items():
            self.sealed.setdefault(v, {})[cid] = ct
            self.bytes_in["share_keys"] += len(ct) + 64
        for v, c in commits.items():
            self.commits[(cid, v)] = c
        self.u1.append(cid)

    def inbox(self, cid: int) -> dict[int, bytes]:
        return dict(self.sealed.get(cid, {}))

    def take_masked(self, cid: int, data: bytes) -> None:
        if cid not in self.u1:
            raise SecAggError(f"masked input from client {cid}, which did not share its keys")
        self.masked[cid] = masks.unpack_bits(data, self.params.bits, self.params.count)
        self.bytes_in["masked_input"] += len(data)

    def survivors(self) -> list[int]:
        return sorted(self.masked)

    def _check(self, r: Reveal) -> tuple[int, int] | None:
        """(x, y) of a revealed share that matches its dealer's commitment; None (counted) if not."""
        commit = self.commits.get((r.dealer, r.holder))
        if commit is None or len(r.share) != 2 + shamir.SHARE_BYTES:
            self.refused_shares += 1
            return None
        x, body = r.share[:2], r.share[2:]
        if digest(self.params.context, r.kind.encode(), x, body) != commit[0 if r.kind == "s" else 1]:
            self.refused_shares += 1
            return None
        try:
            return int.from_bytes(x, "big"), shamir.share_from_bytes(body)
        except ValueError:
            self.refused_shares += 1
            return None

    def unmask(self, reveals: list[Reveal]) -> np.ndarray:
        """The sum of the survivors' inputs mod 2^k (uint64 residues)."""
        p = self.params
        u2 = self.survivors()
        dropped = sorted(set(self.u1) - set(u2))
        shares: dict[tuple[int, str], list[tuple[int, int]]] = {}
        for r in reveals:
            self.bytes_in["unmask"] += len(r.share) + 8
            want = "b" if r.dealer in self.masked else "s"
            if r.kind != want or r.holder not in self.masked:
                self.refused_shares += 1            # never both secrets of one client
                continue
            xy = self._check(r)
            if xy is not None:
                shares.setdefault((r.dealer, r.kind), []).append(xy)
        graph = masks.neighbours(sorted(self.roster), p.degree or len(self.roster), p.graph_seed)
        total = np.zeros(p.count, dtype=np.uint64)
        for u in u2:
            total = masks.add_mod(total, self.masked[u], p.bits)
            b = self._rebuild(u, "b", shares, graph)
            total = masks.sub_mod(total, masks.prg(b, p.count, p.bits), p.bits)
        for u in dropped:
            s_secret = self._rebuild(u, "s", shares, graph)
            s_key = KeyPair.from_secret(s_secret)
            if s_key.public != self.roster[u][1]:
                raise SecAggError(f"client {u}: rebuilt mask key does not match its advertised key")
            for v in graph[u]:
                if v in self.masked:
                    lo, hi = min(u, v), max(u, v)
                    seed = agree(s_key.private, self.roster[v][1],
                                 b"thinwire-secagg/mask|" + p.context + f"|{lo}-{hi}".encode())
                    total = masks.sub_mod(total, masks.pair_mask(v, u, seed, p.count, p.bits), p.bits)
        return total

    def _rebuild(self, u: int, kind: str, shares, graph) -> bytes:
        t = masks.threshold(len(graph[u]))
        got = shares.get((u, kind), [])
        if len(got) < t:
            raise SecAggError(f"client {u}: {len(got)} valid {kind} shares, need t={t} (too many dropouts)")
        return shamir.combine(got, t)


def run_round(inputs: dict[int, np.ndarray], params: SecAggParams, *, drop_after_shares: set[int] = frozenset(),
              tamper=None) -> tuple[np.ndarray, SecAggServer, dict[int, SecAggClient]]:
    """All four steps in one process (simulation): the clients in `drop_after_shares` vanish after
    step 2, i.e. after their masks are fixed. `tamper(server)` may alter what the server holds
    before step 4. Returns (sum of the survivors' inputs mod 2^k, the server, the clients)."""
    clients = {cid: SecAggClient(cid, params) for cid in sorted(inputs)}
    server = SecAggServer(params)
    for cid, c in clients.items():
        server.take_advertise(cid, *c.advertise())
    for cid, c in clients.items():
        server.take_shares(cid, *c.share_keys(server.roster))
    for cid, c in clients.items():
        if cid not in drop_after_shares:
            server.take_masked(cid, c.masked_input(inputs[cid], server.inbox(cid), server.u1))
    if tamper is not None:
        tamper(server, clients)
    reveals = []
    for cid in server.survivors():
        reveals += clients[cid].unmask(server.survivors())
    return server.unmask(reveals), server, clients
