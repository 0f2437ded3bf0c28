"""Secure aggregation inside runs (issue 23): `--strategy secagg` in simulation and served mode.

What is checked: the model after a round is exactly what the plain integer sum of the survivors'
quantized updates gives (masks cancel, dropouts after masking are unmasked from shares), the
server never holds an individual update (only masked residues that look uniform mod 2^k), the
session's steps (dropouts, timeouts, wrong-step messages), and bad SecAgg calls over gRPC.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import in_process_run, wait_all
from thinwire.config import RunConfig, to_dict
from thinwire.secagg import masks, wire
from thinwire.secagg.protocol import SecAggClient, SecAggError, SecAggParams
from thinwire.secagg.session import SecAggSession, StepError

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
SETTINGS = dict(dataset="digits", model="mlp", lr=0.05, server_lr=1.0, strategy="secagg", secagg_clip=0.008,
                rounds=1, eval_every=1)


def clear_inputs(cfg: RunConfig, clients: list[int]) -> tuple[torch.Tensor, dict[int, np.ndarray], object]:
    """(initial model, each client's clear integer input of round 0, a round-0 task): recomputed in
    this process with the client code, as the clients computed them."""
    from thinwire.data.datasets import dataset_from_config
    from thinwire.server.strategy import make_strategy
    from thinwire.sim.worker import SimWorker
    from thinwire.training import build_run_model

    data = dataset_from_config(cfg)
    init, _, _ = build_run_model(cfg, data)
    strategy = make_strategy(cfg)
    tasks = [strategy.configure_client(0, c) for c in clients]
    worker = SimWorker(to_dict(cfg))
    worker.load(data)
    results = worker.run(init, [(t.to_dict(), None) for t in tasks])
    return init, {r.client_id: wire.clear_input(r.payload) for r in results}, tasks[0]


def expected_model(init: torch.Tensor, xs: dict[int, np.ndarray], task, survivors: list[int]) -> torch.Tensor:
    """Round 0 of secagg from the plain (unmasked) integer sum: init + mean of the decoded sum
    (server_lr 1; in round 0 the server momentum's velocity is the step itself)."""
    total = np.sum([xs[c] for c in survivors], axis=0)
    return torch.add(init, wire.codec_of(task).decode_sum(total, init.numel()).div_(len(survivors)), alpha=1.0)


def final_model(run_dir: Path) -> torch.Tensor:
    from thinwire import checkpoint
    return checkpoint.load(run_dir, kind=None)["global"].float().reshape(-1)


# -- the session's steps ------------------------------------------------------------------------
def _clients(params, ids):
    return {c: SecAggClient(c, params) for c in ids}


def test_session_unmasks_the_survivors_sum_with_dropouts_after_masking():
    params = SecAggParams(count=257, bits=13, degree=6, context=b"t", graph_seed=3)   # t = 4: 2 of 6 may go
    ids = list(range(9))
    s = SecAggSession(params, ids)
    cs = _clients(params, ids)
    rng = np.random.default_rng(0)
    xs = {c: rng.integers(-40, 41, params.count) for c in ids}
    for c in ids:
        assert s.roster() is None
        s.advertise(c, *cs[c].advertise())
    roster = s.roster()
    for c in ids:
        assert s.inbox(c) is None
        s.share(c, *cs[c].share_keys(roster))
    gone = {2, 7}                                   # masks fixed, inputs never sent
    for c in ids:
        if c not in gone:
            inbox, u1 = s.inbox(c)
            s.take_masked(c, cs[c].masked_input(xs[c], inbox, u1))
    u2 = s.close_inputs()
    assert u2 == [c for c in ids if c not in gone] and not s.done
    for c in u2:
        s.reveal(c, cs[c].unmask(u2))
    assert s.done
    total = masks.unwrap(s.finish(), params.bits)
    assert np.array_equal(total, np.sum([xs[c] for c in u2], axis=0))
    m = s.metrics()
    assert m["secagg_dropped_after_masking"] == 2 and m["secagg_u1"] == 9 and m["secagg_u2"] == 7


def test_session_goes_on_without_silent_or_gone_clients_and_refuses_wrong_steps():
    now = [0.0]
    params = SecAggParams(count=16, bits=8, context=b"t")
    s = SecAggSession(params, [0, 1, 2, 3, 4], timeout=10.0, clock=lambda: now[0])
    cs = _clients(params, range(5))
    for c in (0, 1, 2):
        s.advertise(c, *cs[c].advertise())
    s.drop(3)                                        # left: no longer waited for
    with pytest.raises(StepError):
        s.share(0, {}, {})                           # still advertising
    with pytest.raises(StepError):
        s.advertise(0, *cs[0].advertise())           # twice
    with pytest.raises(SecAggError, match="32 each"):
        s.advertise(4, b"short", b"keys")
    s.tick()
    assert s.roster() is None                        # 4 is silent, but not for long enough
    now[0] = 11.0
    s.tick()
    assert sorted(s.roster()) == [0, 1, 2] and s.dropped["advertise"] == [3, 4]
    roster = s.roster()
    sealed, commits = cs[0].share_keys(roster)
    with pytest.raises(SecAggError, match="neighbours"):
        s.share(0, {1: sealed[1]}, {1: commits[1]})  # shares for the wrong set of clients
    with pytest.raises(StepError):
        s.share(4, sealed, commits)                  # timed out of the round
    for c in (0, 1, 2):
        s.share(c, *cs[c].share_keys(roster))
    with pytest.raises(SecAggError, match="not in U1"):
        s.take_masked(4, b"")
    s.close_inputs()                                 # nobody sent an input
    assert s.done and "no masked input" in s.error
    with pytest.raises(SecAggError, match="no masked input"):
        s.finish()


def test_a_round_with_too_few_clients_fails_with_its_reason():
    params = SecAggParams(count=4, bits=8)
    s = SecAggSession(params, [0, 1])
    cs = _clients(params, [0, 1])
    for c in (0, 1):
        s.advertise(c, *cs[c].advertise())
    assert s.done and "at least 3" in s.error


# -- simulation ---------------------------------------------------------------------------------
def test_simulated_secagg_round_equals_the_plain_sum_of_the_survivors(tmp_path: Path):
    """12 selected, the first 8 masked inputs close the round: 4 clients drop out after masking
    and are unmasked from shares. The model is exactly the plain sum's."""
    settings = dict(SETTINGS, clients=20, per_round=8, overcommit=1.5)
    res = in_process_run(tmp_path, **settings)
    row = res.metrics[0]
    survivors = sorted(row["accepted_clients"])
    assert row["selected"] == 12 and len(survivors) == 8 and row["secagg_dropped_after_masking"] == 4
    assert row["secagg_u2"] == 8 and row["aggregated"] == 8 and "secagg_error" not in row
    # key exchange: 12 x advertise + 12 x shares for 11 neighbours, 8 x reveals; all counted in bytes_up
    assert row["secagg_key_bytes_up"] > 12 * 11 * 100 and row["bytes_up"] >= row["secagg_key_bytes_up"] + row["secagg_masked_bytes"]
    cfg = RunConfig(name="inproc", out_dir=str(tmp_path), progress=False, **settings)
    init, xs, task = clear_inputs(cfg, survivors)
    assert torch.equal(final_model(res.run_dir), expected_model(init, xs, task, survivors))


def test_simulated_secagg_with_a_sparse_graph_and_a_shared_block(tmp_path: Path):
    settings = dict(SETTINGS, clients=16, per_round=10, overcommit=1.2, secagg_degree=6, secagg_ratio=2.0,
                    secagg_bits=3)
    res = in_process_run(tmp_path, **settings)
    row = res.metrics[0]
    survivors = sorted(row["accepted_clients"])
    assert row["secagg_dropped_after_masking"] == 2
    cfg = RunConfig(name="inproc", out_dir=str(tmp_path), progress=False, **settings)
    init, xs, task = clear_inputs(cfg, survivors)
    count = wire.codec_of(task).kept(init.numel())
    assert 0.4 < count / init.numel() < 0.6                 # a shared block of about half the coordinates
    assert torch.equal(final_model(res.run_dir), expected_model(init, xs, task, survivors))
    # modulus for n = 12 clients, b = 3 (L = 3): 2 x 12 x 3 + 1 = 73 -> 7 bits per kept value
    assert row["secagg_masked_bytes"] == len(survivors) * ((count * 7 + 7) // 8)


def test_secagg_settings_are_checked():
    from thinwire.errors import ConfigError

    for bad, field in ((dict(per_round=2), "per_round"), (dict(codec="eden:bits=2"), "codec"),
                       (dict(feedback="ef"), "feedback"), (dict(secagg_degree=3), "secagg_degree"),
                       (dict(secagg_ratio=0.5), "secagg_ratio"), (dict(secagg_bits=1), "secagg_bits"),
                       (dict(secagg_clip=0.0), "secagg_clip"), (dict(loss_policy="holes"), "loss_policy")):
        with pytest.raises(ConfigError, match=f"^{field}:"):
            RunConfig(**{**SETTINGS, "clients": 10, "per_round": 5, **bad}).validate()


# -- served: 100 clients, 10 dropping out after masking -------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_served_secagg_100_clients_10_drop_after_masking(tmp_path: Path):
    """A real server (in this process, so the test can inspect what it holds) and three client
    processes on 127.0.0.1; the one hosting clients 90-99 kills itself once their masks are fixed.
    The round completes, the model is the plain sum's of the 90 survivors, and the server held
    only masked residues."""
    from thinwire.server.app import ParameterServer, ServeOptions
    from thinwire.server.service import ServerHandle
    from thinwire.wire.security import Authenticator, ServerSecurity

    settings = dict(SETTINGS, clients=100, per_round=100, local_epochs=1)
    cfg = RunConfig(name="served", out_dir=str(tmp_path), progress=False, **settings).validate()
    ps = ParameterServer(cfg, ServeOptions(port=0, heartbeat_timeout=3.0, join_wait=90, linger=1.0))
    handle = ServerHandle(ps, ServerSecurity(None, Authenticator(), []))
    procs = []
    try:
        for start, n, crash in ((0, 45, None), (45, 45, None), (90, 10, "secagg_masked:round=0")):
            env = {**ENV, **({"THINWIRE_CRASH_AT": crash} if crash else {})}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server", f"127.0.0.1:{handle.port}",
                 "--client-id-start", str(start), "--virtual-clients", str(n), "--parallel", "2", "--max-wait", "60"],
                stdout=open(tmp_path / f"client{start}.log", "w"), stderr=subprocess.STDOUT, env=env))
        for _ in range(240):
            if handle.wait(1.0):
                break
            bad = [p for p in procs[:2] if p.poll() not in (None, 0)]
            assert not bad, (tmp_path / "client0.log").read_text()[-2000:]
        assert handle.ps.finished, (tmp_path / "client0.log").read_text()[-2000:]
        codes = wait_all(procs, 60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        handle.stop()
    assert codes[:2] == [0, 0] and codes[2] not in (0, None)          # the third was killed
    row = json.loads((tmp_path / "served" / "metrics.jsonl").read_text().splitlines()[0])
    survivors = sorted(row["accepted_clients"])
    assert survivors == list(range(90)) and row["secagg_u1"] == 100 and row["secagg_dropped_after_masking"] == 10
    assert "secagg_error" not in row and row["secagg_refused_shares"] == 0
    init, xs, task = clear_inputs(cfg, list(range(100)))
    assert torch.equal(ps.global_vec, expected_model(init, xs, task, survivors))
    # What the server held: public keys, sealed shares, commitments and masked inputs. Each masked
    # input is x + masks mod 2^k: uniform over the 2^k residues, unlike x, which lies in [-L, L].
    session = ps.engine.strategy.session
    k, L = session.params.bits, 1
    plain = (2 * L + 1) / 2 ** k
    assert sorted(session.server.masked) == survivors
    for c, y in session.server.masked.items():
        x = masks.wrap(xs[c], k)
        assert np.mean(y == x) < 3 * 2 ** -k                     # no coordinate more often equal than chance
        inside = np.mean(masks.unwrap(y, k) ** 2 <= L * L)
        assert inside < plain + 5 * np.sqrt(plain / y.size)     # 5 SE above the uniform rate (x: 100 %)
    sizes = {c: len(v) for c, v in session.server.sealed.items()}
    assert set(sizes) == set(range(100)) and all(n == 99 for n in sizes.values())   # sealed, never opened


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bad_secagg_calls_get_a_grpc_status_and_the_round_still_completes(tmp_path: Path):
    import grpc

    from thinwire.client.grpc_client import Connection
    from thinwire.protos import thinwire_pb2 as pb2
    from thinwire.server.app import ParameterServer, ServeOptions
    from thinwire.server.service import ServerHandle
    from thinwire.wire.security import Authenticator, ClientSecurity, ServerSecurity

    cfg = RunConfig(name="bad", out_dir=str(tmp_path), progress=False, **dict(SETTINGS, clients=4, per_round=3)).validate()
    ps = ParameterServer(cfg, ServeOptions(port=0, heartbeat_timeout=60.0, join_wait=60, linger=0.5))
    handle = ServerHandle(ps, ServerSecurity(None, Authenticator(), []))
    conn = Connection(f"127.0.0.1:{handle.port}", ClientSecurity(None))
    proc = None
    try:
        for c in range(4):
            conn.join(c)
        selected = []
        for _ in range(100):
            selected = sorted(t.client_id for t in conn.get_tasks([0, 1, 2, 3]).tasks)
            if selected:
                break
            time.sleep(0.1)
        assert len(selected) == 3
        other = ({0, 1, 2, 3} - set(selected)).pop()
        c = selected[0]

        def refused(req):
            with pytest.raises(grpc.RpcError) as e:
                conn.stub.SecAgg(req, timeout=10)
            return e.value.code(), e.value.details()

        key = bytes(32)
        assert refused(wire.advertise_request(pb2, c, 5, key, key)) == (
            grpc.StatusCode.FAILED_PRECONDITION, "round 5 has not started (current 0)")
        code, msg = refused(wire.advertise_request(pb2, other, 0, key, key))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and f"client {other} takes no part" in msg
        code, msg = refused(wire.advertise_request(pb2, c, 0, b"short", key))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("public keys: 5 and 32 bytes")
        code, msg = refused(wire.request(pb2, c, 0, "REVEAL"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "advertise step" in msg
        code, msg = refused(pb2.SecAggRequest(client_id=c, round=0, step=9))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("step: 9")
        raw = conn.channel.unary_unary("/thinwire.v1.ParameterServer/SecAgg")
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff\xff", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid SecAggRequest" in e.value.details()
        assert "\n" not in msg and ps.session is not None and ps.session.phase == "advertise"
        # nothing was taken: the real clients now run the round to its end
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server", f"127.0.0.1:{handle.port}",
             "--client-id-start", "0", "--virtual-clients", "4", "--parallel", "2", "--max-wait", "60"],
            stdout=open(tmp_path / "client.log", "w"), stderr=subprocess.STDOUT, env=ENV)
        assert handle.wait(120), (tmp_path / "client.log").read_text()[-2000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.wait(30)
        conn.close()
        handle.stop()
    row = json.loads((tmp_path / "bad" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["secagg_u2"] == 3 and row["aggregated"] == 3 and "secagg_error" not in row
    init, xs, task = clear_inputs(cfg, selected)
    assert torch.equal(ps.global_vec, expected_model(init, xs, task, selected))
