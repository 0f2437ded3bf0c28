"""Served mode with real processes on 127.0.0.1: `thinwire server` + `thinwire client` processes.

- 3 client processes train 3 rounds to accuracy well above chance; one is killed (SIGKILL) mid-round
  and the round still closes in time; restarted, it rejoins and is aggregated again.
- the server is killed (SIGKILL) mid-run and restarted with --resume: the run finishes with every
  (round, client) accepted exactly once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import wait_all
from thinwire.collective.group import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _server(tmp_path: Path, port: int, *extra: str, log: str = "server.log") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--host", "127.0.0.1", "--port", str(port),
           "--out-dir", str(tmp_path), "--no-progress", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2",
           "--linger", "3", *extra]
    return subprocess.Popen(cmd, stdout=open(tmp_path / log, "a"), stderr=subprocess.STDOUT, env=ENV)


def _client(tmp_path: Path, port: int, start: int, n: int = 1, log: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server", f"127.0.0.1:{port}",
           "--client-id-start", str(start), "--virtual-clients", str(n), "--parallel", str(n), "--max-wait", "60"]
    out = open(tmp_path / (log or f"client{start}.log"), "a")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(pred, timeout: float, what: str, procs=()) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return
        time.sleep(0.1)
    for p in procs:
        p.kill()
    raise AssertionError(f"timed out waiting for {what}")


def test_three_clients_kill_and_rejoin(tmp_path):
    port = free_port()
    run = tmp_path / "served"
    # emulated compute (~1-3 s per client round) makes "mid-round" a wide, reliable window
    srv = _server(tmp_path, port, "--name", "served", "--clients", "3", "--per-round", "3", "--rounds", "3",
                  "--lr", "0.1", "--deadline", "8", "--emulate", "--compute-per-sample", "0.003", "--join-wait", "30")
    clients = {k: _client(tmp_path, port, k) for k in range(3)}
    procs = [srv, *clients.values()]
    try:
        _wait_for(lambda: len(_rows(run / "metrics.jsonl")) >= 1, 120, "round 0", procs)
        time.sleep(0.7)                                   # round 1 is open, clients are computing
        clients[2].send_signal(signal.SIGKILL)
        clients[2].wait(10)
        _wait_for(lambda: len(_rows(run / "metrics.jsonl")) >= 2, 60, "round 1 to close without client 2", procs)
        r1 = _rows(run / "metrics.jsonl")[1]
        assert 2 not in r1["accepted_clients"] and r1["accepted"] == 2
        assert r1["round_time"] < 8 + 1.5                # never held past the deadline
        restarted = _client(tmp_path, port, 2, log="client2-restarted.log")
        procs.append(restarted)
        codes = wait_all([srv, clients[0], clients[1], restarted], 150)
        assert codes == [0, 0, 0, 0], (codes, (tmp_path / "server.log").read_text()[-3000:])
        rows = _rows(run / "metrics.jsonl")
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert 2 in rows[2]["accepted_clients"], "restarted client did not rejoin round 2"
        # Local training is seeded per (round, client) and the server's sum is exact, so the served
        # run is the in-process simulation in which each round aggregates the same clients: the
        # ones the served run lost (killed, or late) straggle 1000x past the deadline there. Same
        # global model (float tolerance) and the same accuracy every round, not just "above chance".
        import torch

        from helpers import in_process_run

        trace = tmp_path / "lost.csv"
        trace.write_text("client_id,round,slowdown\n" + "".join(
            f"{k},{r['round']},1000\n" for r in rows for k in range(3) if k not in r["accepted_clients"]))
        inproc = in_process_run(tmp_path / "inproc", clients=3, per_round=3, rounds=3, lr=0.1, deadline=8.0,
                                compute_per_sample=0.003, stragglers="trace", straggler_trace=str(trace))
        assert [sorted(m["accepted_clients"]) for m in inproc.metrics] == [sorted(r["accepted_clients"]) for r in rows]
        g_srv = torch.load(run / "checkpoint.pt", weights_only=True)["global"]
        g_inp = torch.load(inproc.run_dir / "checkpoint.pt", weights_only=True)["global"]
        assert (g_srv - g_inp).abs().max() <= 1e-6 * g_inp.abs().max(), float((g_srv - g_inp).abs().max())
        assert [r["accuracy"] for r in rows] == [m["accuracy"] for m in inproc.metrics]
        log = (tmp_path / "client0.log").read_text()
        assert "updates accepted" in log
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_server_crash_and_resume_counts_each_update_once(tmp_path):
    port = free_port()
    run = tmp_path / "crash"
    args = ["--name", "crash", "--clients", "3", "--per-round", "3", "--rounds", "4", "--emulate",
            "--compute-per-sample", "0.002"]
    srv = _server(tmp_path, port, *args)
    fleet = _client(tmp_path, port, 0, n=3, log="fleet.log")
    procs = [srv, fleet]
    try:
        _wait_for(lambda: len(_rows(run / "metrics.jsonl")) >= 1, 120, "round 0", procs)
        time.sleep(0.5)                                   # round 1 in progress: updates in flight are lost
        srv.send_signal(signal.SIGKILL)
        srv.wait(10)
        done_before = len(_rows(run / "accepted.jsonl"))
        time.sleep(1.0)
        srv2 = _server(tmp_path, port, *args, "--resume", log="server-resumed.log")
        procs.append(srv2)
        codes = wait_all([srv2, fleet], 150)
        assert codes == [0, 0], (codes, (tmp_path / "server-resumed.log").read_text()[-3000:],
                                 (tmp_path / "fleet.log").read_text()[-3000:])
        accepted = _rows(run / "accepted.jsonl")
        assert [a["round"] for a in accepted] == [0, 1, 2, 3]
        for a in accepted:
            assert sorted(a["accepted"]) == [0, 1, 2], a       # none lost, none twice
        assert [r["round"] for r in _rows(run / "metrics.jsonl")] == [0, 1, 2, 3]
        assert 1 <= done_before < 4                       # the crash really happened mid-run
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
