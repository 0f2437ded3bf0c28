"""Secure aggregation in a run: the task fields both ends read, the two payloads (a client's clear
integer input, which never leaves it in served mode, and its masked input, which is what it
pushes), and the protobuf messages of the key-exchange steps.

The simulator builds the same messages as a served client to count their bytes, so both modes
report the same extra uplink and downlink of secure aggregation.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from thinwire import compression
from thinwire.secagg import masks
from thinwire.secagg.protocol import Reveal, SecAggParams
from thinwire.secagg.quantize import IntegerCodec, modulus_bits
from thinwire.task import Task, unpack_result
from thinwire.wire.format import GRPC_FRAME

KIND = "secagg"                     # the client task kind: train, then quantize onto the shared grid
INPUT = "secagg_input"              # the kind's one result tensor: the integers x in [-L, L]
MASKED = "secagg-masked"            # codec name of a pushed masked input (k-bit residues, never decoded alone)


def task_fields(cfg, rnd: int, clients: int) -> dict[str, Any]:
    """The `secagg` entry of a secagg task's params: the shared codec and the protocol's parameters.
    `clients` bounds the number of inputs summed, which sets the modulus (no wrap-around). The
    shared blocks are drawn over the flat model (no per-tensor segments), so both ends know the
    kept count from the model's size alone."""
    return {"bits": cfg.secagg_bits, "ratio": cfg.secagg_ratio, "clip": cfg.secagg_clip,
            "modulus_bits": modulus_bits(cfg.secagg_bits, clients), "degree": cfg.secagg_degree,
            "context": f"{cfg.name}|{cfg.seed}|{rnd}"}


def codec_of(task: Task) -> IntegerCodec:
    f = task.params["secagg"]
    return IntegerCodec(bits=int(f["bits"]), ratio=float(f["ratio"]), clip=float(f["clip"]), seed=task.seed,
                        round=task.round)


def params_of(task: Task, numel: int) -> SecAggParams:
    """The protocol's parameters of a task's round for a model of `numel` parameters (the same for
    every client of the round)."""
    f = task.params["secagg"]
    return SecAggParams(count=codec_of(task).kept(numel), bits=int(f["modulus_bits"]), degree=int(f["degree"]),
                        context=str(f["context"]).encode(), graph_seed=task.seed ^ task.round)


def clear_input(payload: bytes | memoryview) -> np.ndarray:
    """A secagg task's result (the clear integers, identity-encoded) -> int64 array."""
    items = {it.name: it for it in unpack_result(payload)}
    if INPUT not in items:
        raise ValueError(f"result: a secagg task's result needs a {INPUT!r} tensor; got {sorted(items)}")
    enc = items[INPUT].enc
    x = compression.get(enc.codec, **enc.params).decode(enc).reshape(-1)
    return torch.round(x.double()).to(torch.int64).numpy()


def masked_payload(packed: bytes, params: SecAggParams) -> compression.Encoded:
    """The wire form of a masked input: k-bit residues, one Encoded the server never decodes alone."""
    return compression.Encoded(codec=MASKED, params={"bits": params.bits}, numel=params.count,
                               sections={"codes": packed})


def masked_bytes(enc: compression.Encoded, params: SecAggParams) -> bytes:
    """The residues of a pushed masked input, checked against the round's parameters (ValueError)."""
    if enc.codec != MASKED:
        raise ValueError(f"update: codec {enc.codec!r}; a secure-aggregation round takes only {MASKED!r} "
                         "(masked inputs)")
    if enc.holes:
        raise ValueError("update: a masked input arrived with lost chunks; it cannot be used with holes")
    if int(enc.params.get("bits", -1)) != params.bits or enc.numel != params.count:
        raise ValueError(f"update: masked input of {enc.numel} x {enc.params.get('bits')} bits; this round "
                         f"takes {params.count} x {params.bits} bits")
    data = bytes(enc.sections.get("codes", b""))
    if len(data) != (params.count * params.bits + 7) // 8:
        raise ValueError(f"update: masked input of {len(data)} bytes; expected {(params.count * params.bits + 7) // 8}")
    return data


def decode_sum(total: np.ndarray, task: Task, numel: int) -> torch.Tensor:
    """The sum of the survivors' clipped updates from the unmasked residue sum (one decode per round)."""
    signed = masks.unwrap(total, int(task.params["secagg"]["modulus_bits"]))
    return codec_of(task).decode_sum(signed, numel)


# -- the key-exchange messages (served client: sent; simulator: sized) ---------------------------
def request(pb2, cid: int, rnd: int, step: str, **fields):
    return pb2.SecAggRequest(client_id=cid, round=rnd, step=getattr(pb2.SecAggRequest, step), **fields)


def advertise_request(pb2, cid: int, rnd: int, c_public: bytes, s_public: bytes):
    return request(pb2, cid, rnd, "ADVERTISE", c_public=c_public, s_public=s_public)


def share_request(pb2, cid: int, rnd: int, sealed: dict[int, bytes], commits: dict[int, tuple[bytes, bytes]]):
    return request(pb2, cid, rnd, "SHARE_KEYS", shares=[
        pb2.SecAggShare(peer=v, sealed=sealed[v], commit_s=commits[v][0], commit_b=commits[v][1]) for v in sorted(sealed)])


def reveal_request(pb2, cid: int, rnd: int, reveals: list[Reveal]):
    return request(pb2, cid, rnd, "REVEAL", reveals=[pb2.SecAggReveal(dealer=r.dealer, kind=r.kind, share=r.share)
                                                     for r in reveals])


def roster_reply(pb2, roster: dict[int, tuple[bytes, bytes]]):
    return pb2.SecAggReply(ready=True, roster=[pb2.SecAggKeys(client_id=c, c_public=k[0], s_public=k[1])
                                               for c, k in sorted(roster.items())])


def shares_reply(pb2, inbox: dict[int, bytes], u1: list[int]):
    return pb2.SecAggReply(ready=True, shares=[pb2.SecAggShare(peer=d, sealed=s) for d, s in sorted(inbox.items())],
                           clients=u1)


def survivors_reply(pb2, u2: list[int]):
    return pb2.SecAggReply(ready=True, clients=u2)


def size(msg) -> int:
    """Bytes of one unary message on the wire (the serialized message plus gRPC's frame)."""
    return msg.ByteSize() + GRPC_FRAME


def parse_shares(request) -> tuple[dict[int, bytes], dict[int, tuple[bytes, bytes]]]:
    sealed, commits = {}, {}
    for s in request.shares:
        if s.peer in sealed:
            raise ValueError(f"shares: two for client {s.peer}")
        sealed[s.peer] = bytes(s.sealed)
        commits[s.peer] = (bytes(s.commit_s), bytes(s.commit_b))
    return sealed, commits


def parse_reveals(cid: int, request) -> list[Reveal]:
    out = []
    for r in request.reveals:
        if r.kind not in ("s", "b"):
            raise ValueError(f"reveals: kind {r.kind!r}; allowed: s, b")
        out.append(Reveal(cid, int(r.dealer), r.kind, bytes(r.share)))
    return out
