"""The gRPC wire: stub freshness, chunk reassembly, refusals of bad pushes, exact byte accounting.

Each test runs a real ParameterServer behind a real gRPC server on a 127.0.0.1 socket and talks
to it with the real client Connection (or hand-built messages for malformed pushes).
"""
from __future__ import annotations

import filecmp
import importlib.util
import math
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from thinwire import compression
from thinwire.client.grpc_client import Backoff, Connection, ServerUnavailable
from thinwire.config import RunConfig
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.wire.security import Authenticator, ClientSecurity, ServerSecurity
from thinwire.server.app import ParameterServer, ServeOptions
from thinwire.server.service import ServerHandle
from thinwire.wire.reassembly import BODY_ALIGN, BufferBudget, Reassembly
from thinwire.wire.format import (GRPC_FRAME, PUSH_SIZE_KEY, ByteCounter, WireError, chunk_crcs, crc32,
    sha256, split)
from thinwire.wire.link import Link
from thinwire.wire.messages import update_messages

ROOT = Path(__file__).resolve().parents[1]
NUMEL = 1000


# -- stubs ----------------------------------------------------------------------------------------
def test_committed_stubs_are_fresh(tmp_path):
    spec = importlib.util.spec_from_file_location("tw_generate", ROOT / "protos" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for path in gen.generate(tmp_path):
        committed = ROOT / "protos" / path.name
        assert committed.exists(), f"{committed} missing: run python protos/generate.py"
        assert filecmp.cmp(path, committed, shallow=False), \
            f"{committed.name} is stale: run `python protos/generate.py` and commit the result"


# -- transport units ------------------------------------------------------------------------------
def _header(payload: bytes, header_size: int, chunk: int) -> pb2.PushHeader:
    body = payload[header_size:]
    return pb2.PushHeader(model_version=0, encoded_header=payload[:header_size], body_size=len(body),
                          chunk_size=chunk, num_chunks=len(split(len(body), chunk)), body_sha256=sha256(body),
                          chunk_crc32=chunk_crcs(body, split(len(body), chunk)), num_samples=10)


def _identity(vec: torch.Tensor) -> tuple[bytes, int]:
    enc = compression.get("identity").encode(vec)
    return enc.to_bytes(), enc.header_size


def test_reassembly_replays_crc_and_holes():
    payload, hs = _identity(torch.arange(300, dtype=torch.float32))
    h = _header(payload, hs, 256)
    ra = Reassembly(h, max_update_bytes=1 << 20)
    ra.attach(bytearray(b"\xff" * ra.buffer_size))      # a recycled buffer with stale bytes
    body = payload[hs:]
    ranges = split(len(body), 256)
    assert ra.add(0, 0, body[0:256], crc32(body[0:256]))
    assert not ra.add(0, 0, body[0:256], crc32(body[0:256]))        # replay ignored
    with pytest.raises(WireError) as e:
        ra.add(1, 256, body[256:512], 12345)
    assert e.value.code == "DATA_LOSS"
    with pytest.raises(WireError) as e:
        ra.add(1, 250, body[256:512], crc32(body[256:512]))
    assert e.value.code == "INVALID_ARGUMENT"
    assert ra.missing() == list(range(1, len(ranges)))
    assert ra.holes()[0] == ranges[1]
    assert bytes(ra.payload()[hs + 256:]) == bytes(len(body) - 256)   # holes read as zeros
    for i, (a, b) in enumerate(ranges[1:], 1):
        ra.add(i, a, body[a:b], crc32(body[a:b]))
    assert ra.complete
    ra.verify()
    assert bytes(ra.payload()) == payload
    # the body sits on a 64-byte boundary and an fp32 update decodes as a view of it, not a copy
    vec = compression.Encoded.from_bytes(ra.payload())
    dec = compression.get("identity").decode(vec)
    assert torch.equal(dec, torch.arange(300, dtype=torch.float32))
    assert dec.data_ptr() % BODY_ALIGN == 0
    buf_addr = np.frombuffer(ra.buf, dtype=np.uint8).ctypes.data
    assert buf_addr <= dec.data_ptr() < buf_addr + len(ra.buf)
    # read-only bytes are copied (torch cannot hold read-only memory)
    assert compression.get("identity").decode(compression.Encoded.from_bytes(payload)).data_ptr() != dec.data_ptr()
    with pytest.raises(WireError) as e:
        Reassembly(h, max_update_bytes=100)
    assert e.value.code == "RESOURCE_EXHAUSTED"


def test_buffer_budget_bounds_recycles_and_times_out():
    b = BufferBudget(100)
    assert b.acquire(70, 0.1, 60)                               # a push costs more than its buffer
    buf = b.take(60)
    assert not b.acquire(70, 0.05, 60)
    b.release(70, buf)
    assert b.used == 0 and b._pooled == 60
    assert b.acquire(70, 0.1, 60) and b.take(60) is buf        # recycled, not evicted and reallocated
    b.release(70, buf)
    assert b.acquire(70, 0.1, 50) and b._pooled == 0           # other size: evicted to stay under the cap
    b.release(70)
    assert b.acquire(100, 0.1)
    assert not b.acquire(1, 0.05)
    b.release(100)
    assert b.acquire(150, 0.1)                                  # one oversized push may run alone


def test_hand_parser_matches_protobuf():
    from thinwire.wire.messages import chunk_bytes, parse_chunk

    body = memoryview(bytes(range(256)) * 10)
    raw = chunk_bytes(pb2, -3, 7, 5, 9, 1024, body[1024:2048])
    c, ref = parse_chunk(pb2, raw), pb2.UpdateChunk.FromString(raw)
    assert (c.round, c.client_id, c.seq, c.num_chunks, c.offset, c.crc32, bytes(c.payload)) == \
        (ref.round, ref.client_id, ref.seq, ref.num_chunks, ref.offset, ref.crc32, ref.payload)
    h = pb2.UpdateChunk(round=1, client_id=2, header=pb2.PushHeader(body_size=3, encoded_header=b"abc"))
    assert parse_chunk(pb2, h.SerializeToString()).header == h.header
    for bad in (raw[:-5], b"\x08", b"\x0f\x00", b"\x42\x05ab"):
        with pytest.raises(ValueError):
            parse_chunk(pb2, bad)


def test_link_drops_exactly_the_simulated_chunks():
    from thinwire.faults.network import NetworkModel

    net = NetworkModel(seed=3, loss="iid", loss_prob=0.3, chunk_size=64)
    payload, hs = _identity(torch.randn(400))
    body = memoryview(payload)[hs:]
    ranges = split(len(body), 64)
    counter = ByteCounter()
    link = Link(net, 5, "up", time_scale=0.0)
    raw = list(update_messages(pb2, rnd=2, client_id=5, header=_header(payload, hs, 64), body=body, ranges=ranges,
                               seqs=list(range(len(ranges))), link=link, attempt=0, counter=counter))
    msgs = [pb2.UpdateChunk.FromString(m) for m in raw]
    # a multi-chunk push: the header message alone first, then one message per chunk sent
    assert msgs[0].HasField("header") and not msgs[0].payload and not any(m.HasField("header") for m in msgs[1:])
    assert all(m.crc32 == crc32(m.payload) and m.payload == bytes(body[m.offset:m.offset + len(m.payload)])
               for m in msgs[1:])
    sent = {m.seq for m in msgs[1:]}
    assert len(msgs) == len(sent) + 1
    lost = set(np.flatnonzero(net.lost_chunks(5, 2, len(ranges), 0, "up")).tolist())
    assert sent == set(range(len(ranges))) - lost and lost
    t = net.transfer(5, 2, len(payload), "up", hs, policy="holes")
    assert sorted(lost) == t.lost_chunks
    assert counter.dropped_chunks == len(lost)
    assert counter.wire_bytes == sum(len(m) + GRPC_FRAME for m in raw)
    assert counter.wire_bytes == sum(m.ByteSize() + GRPC_FRAME for m in msgs)   # hand framing == protobuf's
    # a single-chunk push is one message: the header rides on the chunk (unless the chunk is lost)
    one = [pb2.UpdateChunk.FromString(m) for m in update_messages(
        pb2, rnd=2, client_id=5, header=_header(payload, hs, 64), body=body, ranges=ranges, seqs=[3],
        link=Link(None, 5), attempt=1, counter=ByteCounter())]
    assert len(one) == 1 and one[0].HasField("header") and one[0].seq == 3
    assert one[0].payload == bytes(body[ranges[3][0]:ranges[3][1]]) and one[0].crc32 == crc32(one[0].payload)


# -- a live server --------------------------------------------------------------------------------
def _serve(tmp_path, *, clients=2, per_round=2, rounds=1, auth=None, creds=None, **cfg_kw):
    cfg = RunConfig(name="wire", out_dir=str(tmp_path), clients=clients, per_round=per_round, rounds=rounds,
                    chunk_size=cfg_kw.pop("chunk_size", 1024), progress=False, **cfg_kw).validate()
    opts = ServeOptions(port=0, heartbeat_timeout=30.0, join_wait=30.0,
                        max_update_bytes=cfg_kw.get("max_update_bytes", 64 * 1024))
    ps = ParameterServer(cfg, opts, init_vec=torch.zeros(NUMEL), evaluator=None)
    auth = auth or Authenticator()
    return ServerHandle(ps, ServerSecurity(creds, auth, [] if not auth.enabled else
                                           [__import__("thinwire.wire.security").wire.security.AuthInterceptor(auth)]))


def _conn(port, token=None):
    return Connection(f"127.0.0.1:{port}", ClientSecurity(None, token=token), backoff=Backoff(max_wait=5))


def _train_task(conn, cid, timeout=10.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        r = conn.get_task(cid)
        if r.action == pb2.TaskReply.TRAIN:
            return r
        time.sleep(0.05)
    raise AssertionError(f"client {cid} never got a task")


def _push_raw(conn, cid, rnd, payload, hs, *, chunk=1024, mutate=None, version=0):
    """Hand-built push so tests can corrupt any field; returns the PushReply or raises RpcError."""
    body = memoryview(payload)[hs:]
    ranges = split(len(body), chunk)
    header = _header(payload, hs, chunk)
    header.model_version = version
    msgs = [pb2.UpdateChunk.FromString(m) for m in
            update_messages(pb2, rnd=rnd, client_id=cid, header=header, body=body, ranges=ranges,
                            seqs=list(range(len(ranges))), link=Link(None, cid), attempt=0, counter=ByteCounter())]
    if mutate:
        msgs = mutate(msgs)
    return conn._push(iter([m.SerializeToString() for m in msgs]), timeout=60, metadata=conn.security.metadata(cid))


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_bad_pushes_are_refused_and_state_stays_correct(tmp_path):
    h = _serve(tmp_path)
    conn = _conn(h.port)
    try:
        for cid in (0, 1):
            conn.join(cid)
        task = _train_task(conn, 0)
        rnd = task.round
        good0 = torch.full((NUMEL,), 1.0)
        p, hs = _identity(good0)

        # wrong round, wrong model version, wrong shape, NaN, bad checksum, oversized, not a payload
        assert _code(lambda: _push_raw(conn, 0, rnd + 1, p, hs))[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs, version=7))[0] == grpc.StatusCode.FAILED_PRECONDITION
        ps_, hs_ = _identity(torch.ones(NUMEL + 1))
        code, msg = _code(lambda: _push_raw(conn, 0, rnd, ps_, hs_))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "1001 elements" in msg
        nan = compression.Encoded(codec="identity", params={}, numel=NUMEL,
                                  sections={"values": np.full(NUMEL, np.nan, np.float32).tobytes()})
        code, msg = _code(lambda: _push_raw(conn, 0, rnd, nan.to_bytes(), nan.header_size))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in msg
        pb, hb_ = _identity(torch.full((NUMEL,), 3e38))      # finite, but would overflow the float32 sum
        code, msg = _code(lambda: _push_raw(conn, 0, rnd, pb, hb_))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "overflow" in msg

        def corrupt(msgs):
            msgs[2].payload = bytes(len(msgs[2].payload))
            return msgs
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs, mutate=corrupt))[0] == grpc.StatusCode.DATA_LOSS

        def oversize(msgs):
            msgs[0].header.body_size = 10 << 20
            return msgs
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs, mutate=oversize))[0] in (
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        big, hb = _identity(torch.ones(NUMEL))

        def huge(msgs):
            msgs[0].header.encoded_header = b"TWE\x01" + b"\xff" * 4
            return msgs
        assert _code(lambda: _push_raw(conn, 0, rnd, big, hb, mutate=huge))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs, mutate=lambda m: m[1:]))[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        # a single message above the server's gRPC limit is refused by gRPC itself
        def giant(msgs):
            msgs[1].payload = bytes(3 << 20)
            return msgs
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs, mutate=giant))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a declared push size is checked before anything is read
        md = conn.security.metadata(0)
        for value, want in (("x,1", grpc.StatusCode.INVALID_ARGUMENT),
                            (f"{10 << 20},1024", grpc.StatusCode.RESOURCE_EXHAUSTED)):
            got = _code(lambda: conn._push(iter([]), timeout=10, metadata=md + ((PUSH_SIZE_KEY, value),)))
            assert got[0] == want and PUSH_SIZE_KEY in got[1] or "exceeds" in got[1]

        # nothing of the above reached the accumulator
        assert h.ps.round_state.accepted == []

        # a good push with a replayed chunk counts once; a duplicate push is ALREADY_EXISTS
        r = _push_raw(conn, 0, rnd, p, hs, mutate=lambda m: m[:3] + [m[2]] + m[3:])
        assert r.result == pb2.PushReply.ACCEPTED
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs))[0] == grpc.StatusCode.ALREADY_EXISTS
        assert h.ps.round_state.accepted == [0]

        _train_task(conn, 1)
        p1, h1 = _identity(torch.full((NUMEL,), 3.0))
        assert _push_raw(conn, 1, rnd, p1, h1).result == pb2.PushReply.ACCEPTED
        assert h.wait(20)
        # FedAvg with equal sample counts: mean of 1 and 3 applied with server lr 1
        assert torch.allclose(h.ps.global_vec, torch.full((NUMEL,), 2.0))
        assert h.ps.history == [{"round": 0, "accepted": [0, 1]}]
        assert h.ps.rejected >= 11
        assert h.ps.ingest.budget.used == 0                   # every reservation and buffer was given back
        # late push after the run: refused, model unchanged
        assert _code(lambda: _push_raw(conn, 0, rnd, p, hs))[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert torch.allclose(h.ps.global_vec, torch.full((NUMEL,), 2.0))
    finally:
        conn.close()
        h.stop()


def test_byte_accounting_is_exact(tmp_path):
    h = _serve(tmp_path, clients=1, per_round=1)
    conn = _conn(h.port)
    try:
        conn.join(0)
        task = _train_task(conn, 0)
        ver, blob = conn.get_model(0)
        enc = compression.get("identity").encode(torch.randn(NUMEL))
        payload = enc.to_bytes()
        reply = conn.push(client_id=0, rnd=task.round, model_version=ver, payload=payload,
                          header_size=enc.header_size, num_samples=5, train_loss=0.1, link=Link(None, 0),
                          chunk_size=1024)
        assert reply.result == pb2.PushReply.ACCEPTED
        up_c, up_s = conn.up.snapshot(), h.ps.up.snapshot()
        # payload = the Encoded bytes exactly; both ends count the same serialized bytes
        assert up_c["payload_bytes"] == up_s["payload_bytes"] == enc.nbytes == reply.payload_bytes
        assert up_c["wire_bytes"] == up_s["wire_bytes"] == reply.wire_bytes
        n_chunks = math.ceil(enc.body_size / 1024)
        assert up_c["messages"] == n_chunks + 1
        # framing: 5-byte gRPC prefix per message plus protobuf field tags/lengths (small, bounded)
        assert 5 * (n_chunks + 1) < up_c["framing_bytes"] < 40 * (n_chunks + 1) + 200
        down_c, down_s = conn.down.snapshot(), h.ps.down.snapshot()
        assert down_c == down_s and down_c["payload_bytes"] == len(blob)
        st = conn.stub.Status(pb2.StatusRequest(), timeout=5)
        assert st.bytes_up_wire == up_s["wire_bytes"] and st.bytes_down_payload == len(blob)
        assert h.wait(20)
        row = __import__("json").loads((tmp_path / "wire" / "metrics.jsonl").read_text().splitlines()[0])
        assert row["bytes_up"] == up_s["wire_bytes"] and row["payload_up"] == enc.nbytes
        assert row["bytes_down"] == down_s["wire_bytes"]
        assert h.ps.ingest.budget.used == 0                   # the declared-size reservation was taken over
    finally:
        conn.close()
        h.stop()


def test_retransmit_and_holes_under_emulated_loss(tmp_path):
    from thinwire.faults.network import NetworkModel

    h = _serve(tmp_path, clients=1, per_round=1, loss="iid", loss_prob=0.25, seed=4, chunk_size=256)
    h.ps.opts.emulate = True
    conn = _conn(h.port)
    try:
        conn.join(0)
        task = _train_task(conn, 0)
        enc = compression.get("identity").encode(torch.randn(NUMEL))
        payload = enc.to_bytes()
        net = NetworkModel.from_config(h.ps.cfg)
        rpcs, push_rpc = [], conn._push

        def counting_push(msgs, **kw):           # the real RPC, counted
            rpcs.append(1)
            return push_rpc(msgs, **kw)
        conn._push = counting_push
        reply = conn.push(client_id=0, rnd=task.round, model_version=0, payload=payload, header_size=enc.header_size,
                          num_samples=5, train_loss=0.1, link=Link(net, 0, "up", time_scale=0.0), chunk_size=256)
        assert reply.result == pb2.PushReply.ACCEPTED       # identity cannot take holes: retransmitted
        t = net.transfer(0, task.round, len(payload), "up", enc.header_size, policy="retransmit")
        c = conn.up.snapshot()
        assert c["dropped_chunks"] == t.dropped_chunks > 0
        assert c["retransmitted_chunks"] == t.retransmitted_chunks
        # bytes offered to the link = the simulator's figure, plus the header that opens every retransmission RPC
        body_sent = t.n_chunks + t.retransmitted_chunks - t.dropped_chunks
        pushes = len(rpcs)
        assert pushes >= 2 and body_sent <= c["messages"] <= body_sent + pushes   # lone chunks carry the header
        assert c["payload_bytes"] + c["dropped_bytes"] == t.wire_bytes + (pushes - 1) * enc.header_size
        assert h.wait(20)
        assert torch.allclose(h.ps.global_vec, enc_decode(payload))
    finally:
        conn.close()
        h.stop()


def test_holes_policy_decodes_eden_around_lost_chunks(tmp_path):
    """With --loss-policy holes and a codec that supports holes, lost chunks are never resent."""
    import json

    from thinwire.faults.network import NetworkModel
    from thinwire.task import Task

    h = _serve(tmp_path, clients=1, per_round=1, loss="iid", loss_prob=0.3, loss_policy="holes", seed=2,
               codec="eden:bits=2", chunk_size=128)
    h.ps.opts.emulate = True
    conn = _conn(h.port)
    try:
        conn.join(0)
        task = _train_task(conn, 0)
        spec = Task.from_dict(json.loads(task.task_json))
        codec = compression.from_spec(spec.codec)
        update = torch.randn(NUMEL, generator=torch.Generator().manual_seed(1))
        enc = codec.encode(update, spec.codec_context())
        payload = enc.to_bytes()
        net = NetworkModel.from_config(h.ps.cfg)
        reply = conn.push(client_id=0, rnd=task.round, model_version=0, payload=payload, header_size=enc.header_size,
                          num_samples=5, train_loss=0.1, link=Link(net, 0, "up", time_scale=0.0), chunk_size=128)
        t = net.transfer(0, task.round, len(payload), "up", enc.header_size, policy="holes")
        assert reply.result == pb2.PushReply.ACCEPTED and reply.holes == len(t.lost_chunks) > 0
        assert conn.up.snapshot()["retransmitted_chunks"] == 0
        assert h.wait(20)
        row = json.loads((tmp_path / "wire" / "metrics.jsonl").read_text().splitlines()[0])
        assert row["hole_chunks"] == len(t.lost_chunks) and row["dropped_chunks"] == len(t.lost_chunks)
        # decoded around the holes: one client, FedAvg weight 1, server lr 1, global from zeros, so
        # the global is exactly the server-side decode of these bytes with these lost chunks,
        # replayed here; and the holes did change it (the lossless decode differs).
        g = h.ps.global_vec
        with_holes = codec.decode(compression.Encoded.from_bytes(payload, holes=net.holes(t)), spec.codec_context())
        whole = codec.decode(compression.Encoded.from_bytes(payload), spec.codec_context())
        assert torch.allclose(g, with_holes, rtol=1e-6, atol=1e-7), float((g - with_holes).abs().max())
        assert not torch.allclose(g, whole, rtol=1e-3, atol=1e-4)
    finally:
        conn.close()
        h.stop()


def test_compressed_model_download_and_bad_codec(tmp_path):
    h = _serve(tmp_path, clients=1, per_round=1)
    h.ps.global_vec = torch.linspace(-1, 1, NUMEL)
    conn = _conn(h.port)
    try:
        conn.join(0)
        ver, full = conn.get_model(0)
        ver16, half = conn.get_model(0, codec="fp16")
        assert ver == ver16 == 0 and len(half) < 0.6 * len(full)
        enc = compression.Encoded.from_bytes(half)
        assert enc.codec == "fp16"
        assert torch.allclose(compression.get("fp16").decode(enc), h.ps.global_vec, atol=1e-3)
        code, msg = _code(lambda: conn.get_model(0, codec="nope"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown codec" in msg
        code, _ = _code(lambda: conn.get_model(0, version=5))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        conn.close()
        h.stop()


def enc_decode(payload: bytes) -> torch.Tensor:
    enc = compression.Encoded.from_bytes(payload)
    return compression.get(enc.codec, **enc.params).decode(enc)


def test_unreachable_server_gives_a_clear_error():
    conn = Connection("127.0.0.1:9", ClientSecurity(None), backoff=Backoff(initial=0.05, max_wait=0.5))
    with pytest.raises(ServerUnavailable, match="did not answer"):
        conn.join(0)
    conn.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
