"""A client's summary adds up (issue 12): every push has one outcome, and the outcomes come from
the server's real replies (ALREADY_EXISTS, ABORTED, FAILED_PRECONDITION, INVALID_ARGUMENT)."""
from __future__ import annotations

import time

import grpc
import pytest
import torch

from thinwire import compression
from thinwire.client.fleet import PUSH_OUTCOMES, FleetResult, push_outcome
from thinwire.client.grpc_client import Backoff, Connection
from thinwire.config import RunConfig
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.wire.security import Authenticator, ClientSecurity, ServerSecurity
from thinwire.server.app import ParameterServer, ServeOptions
from thinwire.server.service import ServerHandle
from thinwire.wire.link import Link

NUMEL = 256


def _serve(tmp_path):
    cfg = RunConfig(name="summary", out_dir=str(tmp_path), clients=2, per_round=2, rounds=2, chunk_size=4096,
                    server_momentum=0.0, progress=False).validate()
    ps = ParameterServer(cfg, ServeOptions(port=0, heartbeat_timeout=30.0, join_wait=30.0, linger=0.0),
                         init_vec=torch.zeros(NUMEL), evaluator=None)
    return ServerHandle(ps, ServerSecurity(None, Authenticator(), []))


def _task(conn, cid):
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:
        r = conn.get_task(cid)
        if r.action == pb2.TaskReply.TRAIN:
            return r
        time.sleep(0.02)
    raise AssertionError("no task")


def test_push_outcomes_add_up_from_real_server_replies(tmp_path):
    h = _serve(tmp_path)
    conn = Connection(f"127.0.0.1:{h.port}", ClientSecurity(None), backoff=Backoff(max_wait=5))
    res = FleetResult()
    enc = compression.get("identity").encode(torch.full((NUMEL,), 0.25))

    def push(cid, rnd, **kw):
        t0 = time.perf_counter()
        try:
            reply = conn.push(client_id=cid, rnd=rnd, model_version=kw.pop("version", rnd), payload=enc.to_bytes(),
                              header_size=enc.header_size, num_samples=1, train_loss=0.0, link=Link(None, cid),
                              chunk_size=4096, **kw)
            outcome = "accepted" if reply.result == pb2.PushReply.ACCEPTED else "late"
        except grpc.RpcError as e:
            outcome = push_outcome(e)
        res.count(outcome, time.perf_counter() - t0)
        return outcome

    try:
        for c in (0, 1):
            conn.join(c)
        rnd = int(_task(conn, 0).round)
        assert push(0, rnd) == "accepted"
        assert push(0, rnd) == "already_received"            # the uncounted ALREADY_EXISTS
        assert push(1, rnd, job=99) == "refused"              # INVALID_ARGUMENT: not the task's job
        h.ps.ingest.busy.add((rnd, 1))                               # another push of client 1 in progress
        assert push(1, rnd) == "retried"                      # ABORTED
        h.ps.ingest.busy.discard((rnd, 1))
        assert push(1, rnd) == "accepted"
        _task(conn, 0)                                        # round rnd + 1 is open
        assert push(1, rnd) == "late"                         # FAILED_PRECONDITION: round closed
        counts = {o: getattr(res, o) for o in PUSH_OUTCOMES}
        assert counts == {"accepted": 2, "already_received": 1, "late": 1, "refused": 1, "retried": 1, "failed": 0}
        assert res.pushes == 6 == sum(counts.values()) and len(res.push_seconds) == 6
        assert res.summary() == ("6 pushes = 2 updates accepted + 1 already received + 1 late + 1 refused"
                                 " + 1 retried + 0 failed")
    finally:
        conn.close()
        h.stop()


@pytest.mark.parametrize("code,details,outcome", [
    (grpc.StatusCode.UNAVAILABLE, "server stopping", "retried"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "", "retried"),
    (grpc.StatusCode.FAILED_PRECONDITION, "the run is finished; no more updates are taken", "late"),
    (grpc.StatusCode.FAILED_PRECONDITION, "client 3 was not selected for round 2", "refused"),
    (grpc.StatusCode.DATA_LOSS, "sha256 mismatch", "refused"),
    (grpc.StatusCode.CANCELLED, "", "failed"),
])
def test_push_outcome_of_other_codes(code, details, outcome):
    class Err(grpc.RpcError):
        def code(self):
            return code

        def details(self):
            return details
    assert push_outcome(Err()) == outcome
