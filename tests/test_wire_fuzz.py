"""Wire fuzz (issue 12): >= 1,000 seeded malformed requests over every RPC beside an honest
3-client run on the same server. The server never crashes, every malformed case is refused
(never ACCEPTED, never an unhandled UNKNOWN/INTERNAL), and the honest run's final model is
bit-identical to the same run without the fuzz."""
from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import pytest
import torch

from thinwire import compression
from thinwire.client.grpc_client import Backoff, Connection
from thinwire.config import RunConfig
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.security import Authenticator, ClientSecurity, ServerSecurity
from thinwire.server.app import ParameterServer, ServeOptions
from thinwire.server.service import ServerHandle
from thinwire.transport import Link

from wire_fuzz import PUSH_KINDS, UNARY_KINDS, Fuzzer

NUMEL, CLIENTS, ROUNDS, CHUNK, CASES = 1000, 3, 4, 256, 1200


def _serve(tmp_path, name):
    cfg = RunConfig(name=name, out_dir=str(tmp_path), clients=CLIENTS, per_round=CLIENTS, rounds=ROUNDS,
                    chunk_size=CHUNK, server_momentum=0.0, progress=False).validate()
    opts = ServeOptions(port=0, heartbeat_timeout=60.0, join_wait=60.0, max_update_bytes=64 * 1024, linger=0.0)
    ps = ParameterServer(cfg, opts, init_vec=torch.zeros(NUMEL), evaluator=None)
    return ServerHandle(ps, ServerSecurity(None, Authenticator(), []))


def _honest(port, gate=None) -> None:
    """Three clients stepping toward their own targets, each in its own thread, pushing in parallel
    (the exact sum does not depend on the arrival order); a push is retried when a fuzz push holds
    the same (round, client). `gate(round)` paces them against the fuzz."""
    errors: list[BaseException] = []

    def client(c: int) -> None:
        conn = Connection(f"127.0.0.1:{port}", ClientSecurity(None), backoff=Backoff(max_wait=20))
        target = torch.randn(NUMEL, generator=torch.Generator().manual_seed(100 + c))
        try:
            conn.join(c)
            for rnd in range(ROUNDS):
                if gate is not None:
                    gate(rnd)
                t_end = time.monotonic() + 60
                while True:
                    r = conn.get_task(c)
                    if r.action == pb2.TaskReply.TRAIN and r.round == rnd:
                        break
                    assert r.action != pb2.TaskReply.FINISHED and time.monotonic() < t_end, r.reason
                    time.sleep(0.01)
                ver, blob = conn.get_model(c, int(r.model_version))
                glob = compression.get("identity").decode(compression.Encoded.from_bytes(blob))
                enc = compression.get("identity").encode((target - glob) * (0.1 * (c + 1)))
                while True:
                    try:
                        reply = conn.push(client_id=c, rnd=rnd, model_version=ver, payload=enc.to_bytes(),
                                          header_size=enc.header_size, num_samples=10 * (c + 1), train_loss=0.0,
                                          link=Link(None, c), chunk_size=CHUNK)
                        assert reply.result == pb2.PushReply.ACCEPTED, reply.message
                        break
                    except grpc.RpcError as e:      # a fuzz push of the same (round, client) was in progress
                        assert e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE), e
                        time.sleep(0.005)
        except BaseException as e:                   # reported by the caller
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


def test_fuzz_beside_an_honest_run(tmp_path, caplog):
    ref = _serve(tmp_path, "reference")
    try:
        _honest(ref.port)
        assert ref.wait(30)
        reference = ref.ps.global_vec.clone()
    finally:
        ref.stop()

    caplog.set_level("INFO")
    h = _serve(tmp_path, "fuzzed")
    done = [0]
    cv = threading.Condition()

    def gate(rnd):                                   # spread the fuzz over every round of the honest run
        with cv:
            cv.wait_for(lambda: done[0] >= (rnd + 1) * CASES // (ROUNDS + 1), timeout=120)

    errors: list[BaseException] = []

    def honest():
        try:
            _honest(h.port, gate)
        except BaseException as e:                   # reported by the main thread
            errors.append(e)
    t = threading.Thread(target=honest)
    t.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{h.port}", options=[("grpc.max_send_message_length", 8 << 20)])
    fz = Fuzzer(ch, NUMEL, CLIENTS, CHUNK, seed=12)
    outcomes: Counter = Counter()
    bad = []
    try:
        for i in range(CASES):
            kind, out = fz.run_case(i)
            outcomes[(kind, out)] += 1
            if out in ("OK", "ACCEPTED", "UNKNOWN", "INTERNAL"):
                bad.append((i, kind, out))
            with cv:
                done[0] += 1
                cv.notify_all()
        t.join(120)
        assert not errors, errors
        assert not t.is_alive()
        assert h.wait(30), "honest run did not finish"
        assert not bad, bad[:20]
        kinds = {k for k, _ in outcomes}
        assert kinds == set(PUSH_KINDS) | set(UNARY_KINDS), set(PUSH_KINDS) | set(UNARY_KINDS) - kinds
        assert torch.equal(h.ps.global_vec, reference)
        nested = {out for (k, out) in outcomes if k == "nested_json"}
        # was UNKNOWN (RecursionError); FAILED_PRECONDITION when the round refused it before its header was read
        assert "INVALID_ARGUMENT" in nested and nested <= {"INVALID_ARGUMENT", "FAILED_PRECONDITION"}, nested
        st = fz.status()
        assert st.finished and st.reassembly_bytes == 0 and st.reassembly_buffers == 0
        assert h.ps.budget.used == 0
        tracebacks = [r for r in caplog.records if r.exc_info is not None]   # e.g. grpc's "Exception calling application"
        assert not tracebacks, [r.getMessage() for r in tracebacks[:3]]
    finally:
        ch.close()
        h.stop()
