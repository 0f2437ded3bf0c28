"""Seeded malformed requests over every RPC of thinwire.v1 (used by test_wire_fuzz.py).

Every case carries at least one defect the server must refuse (a case that could be accepted would
change the model, which the test would catch). `run_case` returns what came back: a gRPC status
code name, or the PushReply result name for pushes the server answered.
"""
from __future__ import annotations

import json
import struct

import grpc
import numpy as np
import torch

from thinwire import compression
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.wire.format import PUSH_SIZE_KEY, ByteCounter, chunk_crcs, crc32, split
from thinwire.wire.link import Link
from thinwire.wire.messages import update_messages

UNARY = {"Join": pb2.JoinRequest, "Leave": pb2.LeaveRequest, "Heartbeat": pb2.HeartbeatRequest,
         "GetTask": pb2.TaskRequest, "Status": pb2.StatusRequest, "HeartbeatMany": pb2.ManyRequest,
         "GetTasks": pb2.ManyRequest}
PUSH_KINDS = ["garbage_first", "empty", "crc", "declared_garbage", "declared_huge", "lying_body_size",
              "lying_num_chunks", "dup_reorder_bad_sha", "truncated", "cancelled", "unknown_codec", "bad_params",
              "numel", "nan", "inf", "closed_round", "future_round", "huge_round", "model_version", "huge_header",
              "nested_json", "foreign_chunk", "seq_range", "offset_lie", "no_crc_list", "short_crc_list",
              "bad_digest", "crc_list_lie", "second_header"]
UNARY_KINDS = ["random_bytes", "bad_id", "batch_bad_id", "batch_empty", "model_version", "model_codec", "model_params",
               "model_random"]


def encoded(vec: torch.Tensor, codec: str = "identity", params: dict | None = None, numel: int | None = None,
            body: bytes | None = None, nest: int = 0) -> tuple[bytes, int]:
    """Encoded bytes of `vec` with the header fields overridable (so invalid payloads can be built);
    `nest` > 0 puts a list nested that deep into the header JSON."""
    enc = compression.get("identity").encode(vec)
    h = json.loads(enc.header_bytes())
    h["codec"], h["params"] = codec, params or {}
    if numel is not None:
        h["numel"] = numel
    raw = json.dumps(h, separators=(",", ":")).encode()
    if nest:
        raw = raw[:-1] + b',"deep":' + b"[" * nest + b"]" * nest + b"}"
    body = b"".join(bytes(v) for v in enc.sections.values()) if body is None else body
    return struct.pack("<3sBI", compression.base.MAGIC, compression.base.FORMAT_VERSION, len(raw)) + raw + body, 8 + len(raw)


class Fuzzer:
    def __init__(self, channel: grpc.Channel, numel: int, clients: int, chunk: int, seed: int) -> None:
        self.ch, self.numel, self.clients, self.chunk = channel, numel, clients, chunk
        self.rng = np.random.default_rng(seed)
        self.push = channel.stream_unary("/thinwire.v1.ParameterServer/PushUpdate", request_serializer=None,
                                         response_deserializer=pb2.PushReply.FromString)
        self.raw = {m: channel.unary_unary(f"/thinwire.v1.ParameterServer/{m}", request_serializer=None,
                                           response_deserializer=None) for m in UNARY}
        self.model = channel.unary_stream("/thinwire.v1.ParameterServer/GetModel", request_serializer=None,
                                          response_deserializer=None)

    def status(self):
        return pb2.StatusReply.FromString(self.raw["Status"](b"", timeout=10))

    # -- cases ----------------------------------------------------------------------------------
    def run_case(self, i: int) -> tuple[str, str]:
        """(kind, outcome) of case i."""
        kinds = PUSH_KINDS + UNARY_KINDS
        kind = kinds[int(self.rng.integers(len(kinds)))]
        try:
            if kind in PUSH_KINDS:
                return kind, self._push_case(kind)
            return kind, self._unary_case(kind)
        except grpc.RpcError as e:
            return kind, e.code().name

    def _unary_case(self, kind: str) -> str:
        rng = self.rng
        bad_ids = [-1, self.clients, 2 ** 31 - 1, -2 ** 31, self.clients + int(rng.integers(1000))]
        if kind == "random_bytes":                  # field number 0 never decodes
            name = list(UNARY)[int(rng.integers(len(UNARY)))]
            self.raw[name](b"\x00" + rng.bytes(int(rng.integers(0, 64))), timeout=10)
            return "OK"
        if kind == "model_random":
            list(self.model(b"\x00" + rng.bytes(int(rng.integers(0, 64))), timeout=10))
            return "OK"
        if kind in ("batch_bad_id", "batch_empty"):
            name = ["HeartbeatMany", "GetTasks"][int(rng.integers(2))]
            ids = [int(rng.integers(self.clients)), bad_ids[int(rng.integers(len(bad_ids)))]] if kind == "batch_bad_id" else []
            rng.shuffle(ids)
            self.raw[name](pb2.ManyRequest(clients=[pb2.ClientRef(client_id=c) for c in ids]).SerializeToString(),
                           timeout=10)
            return "OK"
        if kind == "bad_id":
            cid = bad_ids[int(rng.integers(len(bad_ids)))]
            name = ["Join", "Leave", "Heartbeat", "GetTask", "GetModel"][int(rng.integers(5))]
            if name == "GetModel":
                list(self.model(pb2.ModelRequest(client_id=cid).SerializeToString(), timeout=10))
            else:
                self.raw[name](UNARY[name](client_id=cid).SerializeToString(), timeout=10)
            return "OK"
        cid = int(rng.integers(self.clients))
        if kind == "model_version":
            req = pb2.ModelRequest(client_id=cid, model_version=int(rng.choice([-7, 10 ** 6, 2 ** 62])))
        elif kind == "model_codec":
            req = pb2.ModelRequest(client_id=cid, model_version=-1, codec=str(rng.choice(["nope", "eden:bits", "::", "x" * 5000])))
        else:
            req = pb2.ModelRequest(client_id=cid, model_version=-1, codec=str(rng.choice(["eden:bits=99", "identity:bits=3",
                                                                        "eden:bits=-1", "eden:bits=nan"])))
        list(self.model(req.SerializeToString(), timeout=10))
        return "OK"

    def _push_case(self, kind: str) -> str:
        rng = self.rng
        st = self.status()
        rnd, version = int(st.round), int(st.model_version)
        cid = int(rng.integers(self.clients))
        vec = torch.from_numpy(rng.standard_normal(self.numel).astype(np.float32))
        payload, hs = encoded(vec)
        sha = b""                                   # the body digest is optional
        meta: list[tuple[str, str]] = []
        if kind == "unknown_codec":
            payload, hs = encoded(vec, codec="nope")
        elif kind == "bad_params":
            payload, hs = encoded(vec, params={"bits": int(rng.integers(-5, 99))})
        elif kind == "numel":
            payload, hs = encoded(vec, numel=self.numel + int(rng.integers(1, 50)))
        elif kind in ("nan", "inf"):
            arr = vec.numpy().copy()
            arr[rng.integers(self.numel, size=3)] = np.nan if kind == "nan" else np.inf
            payload, hs = encoded(vec, body=arr.tobytes())
        elif kind == "huge_header":
            payload, hs = encoded(vec, params={"pad": "x" * int(rng.choice([3 << 20, 1 << 21]))})
        elif kind == "nested_json":
            payload, hs = encoded(vec, nest=int(rng.choice([5_000, 100_000, 400_000])))
        elif kind == "bad_digest":
            sha = rng.bytes(int(rng.choice([1, 31, 32, 33])))      # 32: a digest of other content
        if kind == "closed_round":
            rnd -= int(rng.integers(1, 3))
        elif kind == "future_round":
            rnd += int(rng.integers(1, 5))
        elif kind == "huge_round":
            rnd = int(rng.choice([2 ** 62, -2 ** 62, -1]))
        if kind == "model_version":
            version += int(rng.choice([-1, 1, 1000]))
        body = memoryview(payload)[hs:]
        ranges = split(len(body), self.chunk)
        crcs = chunk_crcs(body, ranges)
        if kind in ("dup_reorder_bad_sha", "truncated", "cancelled", "crc_list_lie"):
            crcs[int(rng.integers(len(crcs)))] ^= 1 + int(rng.integers(1 << 31))   # another chunk announced
        elif kind == "no_crc_list":
            crcs = []
        elif kind == "short_crc_list":
            crcs = crcs[:-1] if rng.random() < 0.5 else crcs + [0]
        header = pb2.PushHeader(model_version=version, encoded_header=bytes(payload[:hs]), body_size=len(body),
                                chunk_size=self.chunk, num_chunks=len(ranges), body_sha256=sha, chunk_crc32=crcs,
                                num_samples=int(rng.integers(1, 99)))
        if kind == "lying_body_size":
            header.body_size = len(body) + int(rng.choice([-4, 4, 10 ** 9]))
        elif kind == "lying_num_chunks":
            header.num_chunks = len(ranges) + int(rng.choice([-1, 1, 1000]))
        msgs = [pb2.UpdateChunk.FromString(m) for m in update_messages(
            pb2, rnd=rnd, client_id=cid, header=header, body=body, ranges=ranges, seqs=list(range(len(ranges))),
            link=Link(None, cid), attempt=0, counter=ByteCounter())]
        for m in msgs:                              # each chunk's own crc32 is right: a lie is in the header's list
            if m.payload:
                m.crc32 = crc32(m.payload)
        data = [m.SerializeToString() for m in msgs]
        body_msgs = list(range(1, len(data))) if len(data) > 1 else [0]
        if kind == "garbage_first":
            data[0] = b"\x00" + rng.bytes(int(rng.integers(0, 40)))
        elif kind == "empty":
            data = []
        elif kind == "crc":
            j = int(rng.choice(body_msgs))
            m = pb2.UpdateChunk.FromString(data[j])
            m.crc32 = (crc32(m.payload) + 1 + int(rng.integers(1000))) & 0xFFFFFFFF
            data[j] = m.SerializeToString()
        elif kind == "declared_garbage":
            meta.append((PUSH_SIZE_KEY, str(rng.choice(["abc", "1,2,3", "-5,10", "100,0", "9" * 30 + ",1"]))))
        elif kind == "declared_huge":
            meta.append((PUSH_SIZE_KEY, f"{1 << 40},{self.chunk}"))
        elif kind == "dup_reorder_bad_sha":
            extra = [data[int(j)] for j in rng.choice(body_msgs, size=3)]
            tail = data[1:] + extra
            rng.shuffle(tail)
            data = data[:1] + tail
        elif kind in ("truncated", "cancelled"):
            data = data[:max(1, int(rng.integers(1, len(data))))]
        elif kind == "foreign_chunk":
            m = pb2.UpdateChunk.FromString(data[-1])
            m.client_id, m.round = (cid + 1) % self.clients, m.round + int(rng.integers(0, 2))
            if m.client_id == cid:
                m.round += 1
            data[-1] = m.SerializeToString()
        elif kind == "seq_range":
            m = pb2.UpdateChunk.FromString(data[-1])
            m.seq = len(ranges) + int(rng.integers(0, 1000))
            data[-1] = m.SerializeToString()
        elif kind == "offset_lie":
            m = pb2.UpdateChunk.FromString(data[-1])
            m.offset += int(rng.choice([1, -1, 4096, 2 ** 40])) if m.offset else 1
            data[-1] = m.SerializeToString()
        elif kind == "second_header":
            m = pb2.UpdateChunk.FromString(data[-1])
            m.header.CopyFrom(header)
            data[-1] = m.SerializeToString()
        if kind == "cancelled":
            fut = self.push.future(_stall(data), timeout=10, metadata=meta)
            fut.cancel()
            return "CANCELLED"
        reply = self.push(iter(data), timeout=10, metadata=meta)
        return pb2.PushReply.Result.Name(reply.result)


def _stall(data):
    """Yields the messages, then blocks until the call is cancelled (a stream cut mid-push)."""
    import time
    yield from data
    time.sleep(0.5)
