"""Chaos (issue 12): kill -9 the server at precise points of a run and `--resume`; kill -9 a client
mid-push.

- The server crashes (THINWIRE_CRASH_AT, thinwire/faults/crash.py) mid-push, right after an update was
  folded into the round's sum, and mid-checkpoint, each in round 1 of a 3-round run of one
  `thinwire client` process hosting 3 virtual clients; restarted with `--resume`, the run's final
  model is bit-identical to the uninterrupted run's (the exact sum does not depend on arrival order,
  and clients retrain a redone round from the state they had before it).
- A client process killed mid-push leaves a partial reassembly buffer; once its round closes, the
  server holds no reassembly bytes (metrics.jsonl and Status).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import wait_all
from thinwire.collective.group import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("THINWIRE_CRASH_AT", None)
# A lossy codec with error feedback: each client carries state from round to round, so a redone
# round is only bit-identical if the client restarts it from its state before that round.
RUN = ["--name", "chaos", "--clients", "3", "--per-round", "3", "--rounds", "3", "--seed", "5", "--lr", "0.1",
       "--eval-every", "3", "--codec", "eden:bits=2", "--feedback", "ef"]


def _server(out: Path, port: int, *extra: str, crash: str | None = None, log: str = "server.log") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--host", "127.0.0.1", "--port", str(port),
           "--out-dir", str(out), "--no-progress", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "5",
           "--linger", "2", "--join-wait", "60", *RUN, *extra]
    env = dict(ENV, THINWIRE_CRASH_AT=crash) if crash else ENV
    return subprocess.Popen(cmd, stdout=open(out / log, "a"), stderr=subprocess.STDOUT, env=env)


def _fleet(out: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server", f"127.0.0.1:{port}",
           "--client-id-start", "0", "--virtual-clients", "3", "--parallel", "3", "--max-wait", "60"]
    return subprocess.Popen(cmd, stdout=open(out / "fleet.log", "a"), stderr=subprocess.STDOUT, env=ENV)


def _final_model(run_dir: Path) -> torch.Tensor:
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert int(ckpt["round"]) == 2
    return ckpt["global"]


def _logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(out.glob("*.log")))


def _run(out: Path, crash: str | None) -> torch.Tensor:
    out.mkdir()
    port = free_port()
    procs = [_server(out, port, crash=crash), _fleet(out, port)]
    try:
        if crash is not None:
            code = wait_all(procs[:1], 120)[0]
            assert code == -signal.SIGKILL, (code, _logs(out))
            rows = (out / "chaos" / "metrics.jsonl").read_text().splitlines()
            assert len(rows) == 1, rows                      # crashed inside round 1
            procs.append(_server(out, port, "--resume", log="server-resumed.log"))
        codes = wait_all(procs[1:], 120.0)
        assert codes == [0] * len(codes), (codes, _logs(out))
        accepted = [json.loads(line) for line in (out / "chaos" / "accepted.jsonl").read_text().splitlines()]
        assert [(a["round"], sorted(a["accepted"])) for a in accepted] == [(r, [0, 1, 2]) for r in range(3)]
        return _final_model(out / "chaos")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_server_killed_at_precise_points_resumes_bit_identical(tmp_path):
    """The uninterrupted run and the three crashed ones side by side (each its own port and
    directory): their waits overlap, so the test takes about as long as the slowest run."""
    from concurrent.futures import ThreadPoolExecutor

    points = ("mid_push", "after_fold", "mid_checkpoint")
    with ThreadPoolExecutor(len(points) + 1) as ex:
        ref = ex.submit(_run, tmp_path / "reference", None)
        runs = {p: ex.submit(_run, tmp_path / p, f"{p}:round=1") for p in points}
        reference = ref.result()
        for point, fut in runs.items():
            got = fut.result()
            assert torch.equal(got, reference), f"{point}: max diff {(got - reference).abs().max().item()}"


CLIENT_SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from thinwire import compression
    from thinwire.client.grpc_client import Backoff, Connection
    from thinwire.protos import thinwire_pb2 as pb2
    from thinwire.wire.format import ByteCounter, chunk_crcs, split
    from thinwire.wire.link import Link
    from thinwire.wire.messages import update_messages
    from thinwire.wire.security import ClientSecurity

    conn = Connection(sys.argv[1], ClientSecurity(None), backoff=Backoff(max_wait=20))
    conn.join(1)
    while True:
        r = conn.get_task(1)
        if r.action == pb2.TaskReply.TRAIN:
            break
        time.sleep(0.02)
    enc = compression.get("identity").encode(torch.ones(int(sys.argv[2])))
    payload = enc.to_bytes()
    body = memoryview(payload)[enc.header_size:]
    ranges = split(len(body), int(sys.argv[3]))
    header = pb2.PushHeader(model_version=int(r.model_version), encoded_header=payload[:enc.header_size],
                            body_size=len(body), chunk_size=int(sys.argv[3]), num_chunks=len(ranges),
                            chunk_crc32=chunk_crcs(body, ranges), num_samples=1)

    def stalled():   # the header and half the chunks, then nothing: killed here
        msgs = update_messages(pb2, rnd=int(r.round), client_id=1, header=header, body=body, ranges=ranges,
                               seqs=list(range(len(ranges) // 2)), link=Link(None, 1), attempt=0,
                               counter=ByteCounter())
        yield from msgs
        time.sleep(600)
    conn._push(stalled(), timeout=600, metadata=conn.security.metadata(1))
""")


def test_client_killed_mid_push_frees_reassembly_when_its_round_closes(tmp_path):
    from thinwire import compression
    from thinwire.client.grpc_client import Backoff, Connection
    from thinwire.config import RunConfig
    from thinwire.protos import thinwire_pb2 as pb2
    from thinwire.wire.security import Authenticator, ClientSecurity, ServerSecurity
    from thinwire.server.app import ParameterServer, ServeOptions
    from thinwire.server.service import ServerHandle
    from thinwire.wire.link import Link

    numel, chunk = 20_000, 8192
    cfg = RunConfig(name="killed", out_dir=str(tmp_path), clients=2, per_round=2, rounds=1, chunk_size=chunk,
                    server_momentum=0.0, progress=False).validate()
    opts = ServeOptions(port=0, heartbeat_interval=0.2, heartbeat_timeout=1.5, join_wait=30.0, linger=0.0)
    h = ServerHandle(ParameterServer(cfg, opts, init_vec=torch.zeros(numel), evaluator=None),
                     ServerSecurity(None, Authenticator(), []))
    conn = Connection(f"127.0.0.1:{h.port}", ClientSecurity(None), backoff=Backoff(max_wait=10))
    victim = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, f"127.0.0.1:{h.port}", str(numel), str(chunk)],
                              env=ENV, stdout=open(tmp_path / "victim.log", "w"), stderr=subprocess.STDOUT)
    try:
        conn.join(0)
        t_end = time.monotonic() + 60
        while conn.stub.Status(pb2.StatusRequest(), timeout=5).reassembly_buffers == 0:   # victim mid-push
            assert time.monotonic() < t_end and victim.poll() is None, (tmp_path / "victim.log").read_text()
            conn.heartbeat(0)
            time.sleep(0.05)
        held = conn.stub.Status(pb2.StatusRequest(), timeout=5).reassembly_bytes
        assert held > 4 * numel                               # its whole buffer is reserved
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        r = conn.get_task(0)
        assert r.action == pb2.TaskReply.TRAIN
        enc = compression.get("identity").encode(torch.full((numel,), 0.5))
        reply = conn.push(client_id=0, rnd=int(r.round), model_version=int(r.model_version), payload=enc.to_bytes(),
                          header_size=enc.header_size, num_samples=1, train_loss=0.0, link=Link(None, 0),
                          chunk_size=chunk)
        assert reply.result == pb2.PushReply.ACCEPTED
        assert h.wait(30), "the round did not close without the killed client"
        row = json.loads((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()[0])
        assert row["accepted_clients"] == [0] and row["dropped_clients"] == [1]
        assert row["reassembly_bytes"] == 0 and row["reassembly_buffers"] == 0
        st = conn.stub.Status(pb2.StatusRequest(), timeout=5)
        assert st.reassembly_bytes == 0 and st.reassembly_buffers == 0
    finally:
        if victim.poll() is None:
            victim.kill()
        conn.close()
        h.stop()
