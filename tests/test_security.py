"""TLS, tokens and per-client identities on the real gRPC wire (127.0.0.1 only)."""
from __future__ import annotations

import argparse
import time

import grpc
import pytest
import torch

from thinwire.wire import certs
from thinwire.client.grpc_client import Backoff, Connection
from thinwire.config import RunConfig
from thinwire.errors import ConfigError
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.wire.security import client_security, server_security
from thinwire.server.app import ParameterServer, ServeOptions
from thinwire.server.service import ServerHandle


def _ns(**kw):
    base = dict(tls_cert=None, tls_key=None, tls_ca=None, insecure=False, token=None, tokens_file=None,
                tls_server_name=None)
    base.update(kw)
    return argparse.Namespace(**base)


def _serve(tmp_path, sec):
    cfg = RunConfig(name="sec", out_dir=str(tmp_path), clients=3, per_round=3, rounds=1, progress=False).validate()
    ps = ParameterServer(cfg, ServeOptions(host="127.0.0.1", port=0, heartbeat_timeout=30), init_vec=torch.zeros(10))
    return ServerHandle(ps, sec)


def _conn(port, sec, host="127.0.0.1"):
    return Connection(f"{host}:{port}", sec, backoff=Backoff(max_wait=2))


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    certs.write_bundle(d, ["localhost", "127.0.0.1"], ["client"])
    return d


def test_certs_command_refuses_overwrite_and_writes_private_keys(bundle):
    assert (bundle / "server.key").stat().st_mode & 0o077 == 0
    with pytest.raises(ConfigError, match="already exists"):
        certs.write_bundle(bundle, ["localhost"])


def test_security_flags_are_checked():
    with pytest.raises(ConfigError, match="--insecure"):
        server_security(_ns())
    with pytest.raises(ConfigError, match="tls_key"):
        server_security(_ns(tls_cert="x.pem"))
    with pytest.raises(ConfigError, match="--insecure"):
        client_security(_ns())
    with pytest.raises(ConfigError, match="8 characters"):
        server_security(_ns(insecure=True, token="short"))


def test_tls_mutual_round_trip_and_plaintext_refused(tmp_path, bundle):
    sec = server_security(_ns(tls_cert=str(bundle / "server.pem"), tls_key=str(bundle / "server.key"),
                              tls_ca=str(bundle / "ca.pem"), token="s3cret-token"))
    h = _serve(tmp_path, sec)
    try:
        good = client_security(_ns(tls_ca=str(bundle / "ca.pem"), tls_cert=str(bundle / "client.pem"),
                                   tls_key=str(bundle / "client.key"), token="s3cret-token"))
        c = _conn(h.port, good, host="localhost")
        reply, cfg = c.join(0)
        assert cfg["clients"] == 3 and reply.run_name == "sec"
        ver, blob = c.get_model(0)
        assert ver == 0 and len(blob) > 40
        c.close()
        # no client certificate: the mutual-TLS handshake fails
        nocert = client_security(_ns(tls_ca=str(bundle / "ca.pem"), token="s3cret-token"))
        c = _conn(h.port, nocert, host="localhost")
        assert _code(lambda: c.stub.Join(pb2.JoinRequest(client_id=0), timeout=3,
                                         metadata=nocert.metadata(0))) == grpc.StatusCode.UNAVAILABLE
        c.close()
        # plaintext against a TLS port
        plain = client_security(_ns(insecure=True, token="s3cret-token"))
        c = _conn(h.port, plain)
        assert _code(lambda: c.stub.Join(pb2.JoinRequest(client_id=0), timeout=3,
                                         metadata=plain.metadata(0))) == grpc.StatusCode.UNAVAILABLE
        c.close()
    finally:
        h.stop()


def test_tokens_missing_wrong_and_impersonation(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# client secrets\n0 secret-of-zero\n1 secret-of-one\n")
    sec = server_security(_ns(insecure=True, tokens_file=str(tokens)))
    h = _serve(tmp_path, sec)
    try:
        none = client_security(_ns(insecure=True))
        c = _conn(h.port, none)
        assert _code(lambda: c.join(0)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: c.stub.Status(pb2.StatusRequest(), timeout=3)) == grpc.StatusCode.UNAUTHENTICATED
        c.close()
        wrong = client_security(_ns(insecure=True, token="not-a-valid-secret"))
        c = _conn(h.port, wrong)
        assert _code(lambda: c.join(0)) == grpc.StatusCode.UNAUTHENTICATED
        c.close()
        # client 1's secret cannot act (join, push) as client 0
        one = client_security(_ns(insecure=True, token="secret-of-one"))
        c = _conn(h.port, one)
        assert c.join(1)[1]["clients"] == 3
        md = one.metadata(1)
        assert _code(lambda: c.stub.Join(pb2.JoinRequest(client_id=0), timeout=3, metadata=md)) == \
            grpc.StatusCode.PERMISSION_DENIED
        push = iter([pb2.UpdateChunk(round=0, client_id=0,
                                     header=pb2.PushHeader(encoded_header=b"x" * 16)).SerializeToString()])
        assert _code(lambda: c._push(push, timeout=3, metadata=md)) == grpc.StatusCode.PERMISSION_DENIED
        c.close()
        # per-client secrets file on the client side: each virtual client sends its own
        both = client_security(_ns(insecure=True, tokens_file=str(tokens)))
        c = _conn(h.port, both)
        assert c.join(0)[0].run_name == "sec" and c.join(1)[0].run_name == "sec"
        c.close()
    finally:
        h.stop()


def test_batched_control_plane_checks_every_id(tmp_path):
    """HeartbeatMany / GetTasks act for many ids in one call: with per-client secrets the call's
    token proves one id and every other id must carry its own secret; a shared token covers all."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("0 secret-of-zero\n1 secret-of-one\n2 secret-of-two\n")
    h = _serve(tmp_path, server_security(_ns(insecure=True, tokens_file=str(tokens))))
    try:
        one = client_security(_ns(insecure=True, token="secret-of-one"))
        c = _conn(h.port, one)
        c.join(1)
        assert list(c.heartbeat_many([(1, -1)]).unknown) == []
        md = one.metadata(1)

        def many(method, refs):
            return getattr(c.stub, method)(pb2.ManyRequest(clients=refs), timeout=3, metadata=md)
        for method in ("HeartbeatMany", "GetTasks"):
            for token in ("", "secret-of-two", "wrong"):             # client 0 needs its own secret
                refs = [pb2.ClientRef(client_id=1), pb2.ClientRef(client_id=0, token=token)]
                assert _code(lambda: many(method, refs)) == grpc.StatusCode.PERMISSION_DENIED, (method, token)
            refs = [pb2.ClientRef(client_id=1), pb2.ClientRef(client_id=0, token="secret-of-zero")]
            assert list(many(method, refs).unknown) == [0]           # allowed; 0 has not joined yet
            refs = [pb2.ClientRef(client_id=1), pb2.ClientRef(client_id=3)]
            assert _code(lambda: many(method, refs)) == grpc.StatusCode.INVALID_ARGUMENT
        c.close()
        both = client_security(_ns(insecure=True, tokens_file=str(tokens)))   # a fleet with every secret
        c = _conn(h.port, both)
        for cid in range(3):
            c.join(cid)
        assert list(c.heartbeat_many([(0, -1), (1, -1), (2, -1)]).unknown) == []
        t_end = time.monotonic() + 20
        while not (reply := c.get_tasks([0, 1, 2])).tasks:         # round 0 opens once all three are alive
            assert time.monotonic() < t_end
            time.sleep(0.05)
        assert sorted(t.client_id for t in reply.tasks) == [0, 1, 2]
        assert all(t.action == pb2.TaskReply.TRAIN and t.round == 0 for t in reply.tasks)
        c.close()
    finally:
        h.stop()
    shared = server_security(_ns(insecure=True, token="shared-secret"))
    h = _serve(tmp_path / "shared", shared)
    try:
        c = _conn(h.port, client_security(_ns(insecure=True, token="shared-secret")))
        assert list(c.heartbeat_many([(0, -1), (2, -1)]).unknown) == [0, 2]
        c.close()
    finally:
        h.stop()
