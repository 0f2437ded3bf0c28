"""Mean over a process group of C(p_k), with the collective that fits the codec, bytes counted exactly.

One implementation behind `thinwire allreduce`, the DDP communication hook (`thinwire.ddp`) and the
benchmarks. Each codec gets a *plan*, a pure pair `pack` (local: what this rank puts into the
collective, and C(p) itself for error feedback) and `combine` (what every rank computes from the
collective's result):

- identity: all-reduce of the dense float32 vector;
- randblock: all-reduce of the shared random blocks only (same blocks on every rank: no indices);
- eden (shared rotation): all-gather of the fixed-size payloads (bit-packed codes + one float32
  scale per chunk), every payload scaled in the rotated domain, summed, one inverse rotation;
- anything else (topk, randk, qsgd, fp16, bf16, ...): all-gather of the serialised `Encoded`
  payloads (lengths first, padded to the longest), decoded one by one and averaged.

Randomness is seeded from (seed, step, bucket): `bucket_context`. Shared draws (blocks, EDEN's
rotation) ignore the rank; per-rank draws (QSGD's rounding, rand-k's indices) use it, and the
decoder regenerates them from the sender's rank. Byte counts: `payload_bytes` is what this rank
puts into collectives in one call; `wire_bytes` is what a ring algorithm makes each rank send for
it (all-reduce 2(K-1)/K x payload, all-gather (K-1) x payload).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from thinwire.compression import eden as eden_mod
from thinwire.compression.base import Codec, Context, Encoded, from_spec
from thinwire.compression.randblock import RandBlock, block_slices, gather, scatter

from thinwire.errors import ConfigError


def parse_codec(spec: str | Codec) -> Codec:
    """A codec from "eden:bits=2" (or a Codec); a bad spec is a one-line ConfigError on `codec`."""
    if isinstance(spec, Codec):
        return spec
    try:
        return from_spec(str(spec))
    except ValueError as e:
        raise ConfigError("codec", str(e), "identity, randblock:ratio=R, eden:bits=B, topk:fraction=F, "
                          "randk:fraction=F, qsgd:levels=S, fp16, bf16") from None


def bucket_seed(seed: int, bucket: int) -> int:
    """Seed for one gradient bucket: `seed` itself for bucket 0, a hash of (seed, bucket) otherwise."""
    if bucket == 0:
        return int(seed)
    h = hashlib.blake2b(f"{seed}/bucket/{bucket}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def bucket_context(seed: int, step: int, bucket: int, rank: int, segments: Sequence[int] | None,
                   shared: bool) -> Context:
    return Context(seed=bucket_seed(seed, bucket), round=int(step), client_id=int(rank),
                   segments=None if segments is None else tuple(int(s) for s in segments), shared=shared)


# -- plans: pure pack / combine per codec family -------------------------------------------------
class Plan:
    """How one codec is averaged over a group. `collective` is "all_reduce" or "all_gather"."""

    collective = "all_gather"
    shared = False  # randomness identical on all ranks (else per rank)
    fixed_size = False  # every rank's buffer has the same, known length (no length exchange)

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def pack(self, p: torch.Tensor, ctx: Context, need_local: bool) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """(buffer for the collective, C(p) when need_local, a template combine needs)."""
        raise NotImplementedError

    def combine(self, result: Any, template: Any, world: int, numel: int, ctxs: Sequence[Context],
                device: torch.device) -> torch.Tensor:
        """Mean of C(p_k) from the all-reduced sum (one tensor) or the gathered buffers (a list)."""
        raise NotImplementedError


class DensePlan(Plan):
    collective = "all_reduce"
    shared = True

    def pack(self, p, ctx, need_local):
        return p.clone(), (p if need_local else None), None

    def combine(self, result, template, world, numel, ctxs, device):
        return result.div_(world)


class BlockPlan(Plan):
    collective = "all_reduce"
    shared = True

    def pack(self, p, ctx, need_local):
        blocks = block_slices(ctx.segments, self.codec.ratio, ctx, numel=p.numel())
        buf = gather(p, blocks)
        local = scatter(buf, blocks, p.numel()) if need_local else None
        return buf, local, blocks

    def combine(self, result, template, world, numel, ctxs, device):
        return scatter(result.div_(world), template, numel)


class EdenPlan(Plan):
    """Shared rotation: fixed-size payloads, mean in the rotated domain, one inverse rotation."""

    shared = True
    fixed_size = True

    def pack(self, p, ctx, need_local):
        enc = self.codec.encode(p, ctx)
        body = b"".join(bytes(s) for s in enc.sections.values())
        scales = torch.tensor(enc.meta["scales"], dtype=torch.float32)
        buf = torch.cat([torch.frombuffer(bytearray(body), dtype=torch.uint8) if body else
                         torch.zeros(0, dtype=torch.uint8), scales.view(torch.uint8)]).to(p.device)
        local = self.codec.decode(enc, ctx, device=p.device).float() if need_local else None
        return buf, local, enc

    def combine(self, result, template, world, numel, ctxs, device):
        sizes = [(name, len(data)) for name, data in template.sections.items()]
        nscales = len(template.meta["scales"])
        encs = []
        for buf in result:
            raw = buf.cpu().numpy().tobytes()
            sections, pos = {}, 0
            for name, n in sizes:
                sections[name] = raw[pos:pos + n]
                pos += n
            scales = torch.frombuffer(bytearray(raw[pos:pos + 4 * nscales]), dtype=torch.float32).tolist()
            encs.append(Encoded(codec=template.codec, params=dict(template.params), numel=template.numel,
                                dtype=template.dtype, meta={**template.meta, "scales": scales}, sections=sections))
        return eden_mod.mean_of(encs, device=device).float()


class GatherPlan(Plan):
    """Any codec: serialised payloads gathered, decoded with the sender's context, averaged."""

    def pack(self, p, ctx, need_local):
        enc = self.codec.encode(p, ctx)
        buf = torch.frombuffer(bytearray(enc.to_bytes()), dtype=torch.uint8).to(p.device)
        local = self.codec.decode(enc, ctx, device=p.device).float() if need_local else None
        return buf, local, None

    def combine(self, result, template, world, numel, ctxs, device):
        out = torch.zeros(numel, dtype=torch.float32, device=device)
        for buf, cx in zip(result, ctxs):
            enc = Encoded.from_bytes(buf.cpu().numpy().tobytes())
            out.add_(self.codec.decode(enc, cx, device=device).float())
        return out.div_(len(result))


def make_plan(codec: Codec) -> Plan:
    if codec.name == "identity":
        return DensePlan(codec)
    if isinstance(codec, RandBlock):
        return BlockPlan(codec)
    if codec.name == "eden":
        return EdenPlan(codec)
    return GatherPlan(codec)


# -- communicators -----------------------------------------------------------------------------------
class DistComm:
    """torch.distributed collectives on a process group (gloo or NCCL)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist
        dist.all_reduce(t, group=self.group)
        return t

    def all_gather(self, t: torch.Tensor, same_size: bool = False) -> tuple[list[torch.Tensor], int]:
        """Gather tensors of possibly different lengths (lengths first unless `same_size`);
        returns them and the bytes this rank put in."""
        import torch.distributed as dist
        if same_size:
            outs = [torch.empty_like(t) for _ in range(self.world)]
            dist.all_gather(outs, t.contiguous(), group=self.group)
            return outs, t.numel() * t.element_size()
        n = torch.tensor([t.numel()], dtype=torch.int64, device=t.device)
        ns = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(ns, n, group=self.group)
        lengths = [int(x) for x in ns]
        longest = max(lengths)
        sent = 8
        if all(x == longest for x in lengths):
            padded = t
        else:
            padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
            padded[:t.numel()] = t
        outs = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(outs, padded.contiguous(), group=self.group)
        sent += padded.numel() * padded.element_size()
        return [o[:m] for o, m in zip(outs, lengths)], sent


@dataclass
class Reduced:
    mean: torch.Tensor               # mean_k C(p_k), length of p
    local: torch.Tensor | None       # C(p) of this rank (for error feedback)
    payload_bytes: int               # bytes this rank put into collectives
    wire_bytes: float                # bytes a ring algorithm makes this rank send


def wire_bytes(collective: str, payload: int, world: int) -> float:
    if world <= 1:
        return 0.0
    return 2.0 * (world - 1) / world * payload if collective == "all_reduce" else float((world - 1) * payload)


class Reducer:
    """Compressed mean of one flat vector per (step, bucket) over a communicator."""

    def __init__(self, codec: str | Codec, seed: int = 0, comm: Any = None) -> None:
        self.codec = parse_codec(codec)
        self.plan = make_plan(self.codec)
        self.seed = int(seed)
        self.comm = comm

    def context(self, step: int, bucket: int, rank: int, segments: Sequence[int] | None) -> Context:
        return bucket_context(self.seed, step, bucket, rank, segments, self.plan.shared)

    def mean(self, p: torch.Tensor, *, step: int, bucket: int = 0, segments: Sequence[int] | None = None,
             need_local: bool = True) -> Reduced:
        if self.comm is None:  # the default process group, looked up once it exists
            self.comm = DistComm()
        comm = self.comm
        rank, world = comm.rank, comm.world
        p = p.reshape(-1)
        ctxs = [self.context(step, bucket, r, segments) for r in range(world)]
        buf, local, template = self.plan.pack(p, ctxs[rank], need_local)
        if self.plan.collective == "all_reduce":
            nbytes = buf.numel() * buf.element_size()
            result = comm.all_reduce(buf)
        else:
            result, nbytes = comm.all_gather(buf, same_size=self.plan.fixed_size)
        mean = self.plan.combine(result, template, world, p.numel(), ctxs, p.device)
        return Reduced(mean, local, nbytes, wire_bytes(self.plan.collective, nbytes, world))


def simulate_mean(reducer: Reducer, ps: Sequence[torch.Tensor], *, step: int, bucket: int = 0,
                  segments: Sequence[int] | None = None, need_local: bool = True) -> list[Reduced]:
    """What `Reducer.mean` returns on each of len(ps) ranks, computed in one process (tests, simulation)."""
    world = len(ps)
    ctxs = [reducer.context(step, bucket, r, segments) for r in range(world)]
    packed = [reducer.plan.pack(p.reshape(-1), ctxs[r], need_local) for r, p in enumerate(ps)]
    bufs = [b for b, _, _ in packed]
    if reducer.plan.collective == "all_reduce":
        result: Any = torch.stack(bufs).sum(0) if world > 1 else bufs[0].clone()
        nbytes = bufs[0].numel() * bufs[0].element_size()
    else:
        result = bufs
        longest = max(b.numel() * b.element_size() for b in bufs)
        nbytes = longest + (0 if reducer.plan.fixed_size else 8)
    out = []
    for r, (_, local, template) in enumerate(packed):
        res = result.clone() if isinstance(result, torch.Tensor) else result
        mean = reducer.plan.combine(res, template, world, ps[r].numel(), ctxs, ps[r].device)
        out.append(Reduced(mean, local, nbytes, wire_bytes(reducer.plan.collective, nbytes, world)))
    return out


__all__ = ["Reducer", "Reduced", "DistComm", "Plan", "make_plan", "parse_codec", "bucket_seed", "bucket_context",
           "simulate_mean", "wire_bytes"]
