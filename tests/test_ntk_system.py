"""NTK-FL end to end: `simulate --strategy ntk` (NTK-FL and CP-NTK-FL) and served mode with real processes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from thinwire.config import RunConfig, build
from thinwire.data.datasets import dataset_from_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

D = 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10     # the MLP (64, 64) on 8x8 digits
HEADER_SLACK = 4096                                # per-result bundle header bytes (JSON), generous


def _cfg(tmp_path, name, **kw):
    return build(RunConfig, {"name": name, "out_dir": str(tmp_path), "dataset": "digits", "clients": 20,
                             "partition": "iid", "per_round": 4, "rounds": 6, "strategy": "ntk", "ntk_eta": 0.05,
                             "ntk_taus": [10, 100, 1000], "workers": 2, "progress": False, **kw})


def test_simulate_ntk_and_cp_ntk_count_bytes_and_learn(tmp_path):
    from thinwire.sim.engine import simulate

    full_cfg = _cfg(tmp_path, "ntk")
    sizes = dataset_from_config(full_cfg).client_sizes()
    full = simulate(full_cfg).metrics
    for row in full:
        n = sum(int(sizes[c]) for c in row["accepted_clients"])
        assert row["ntk_samples"] == n and row["aggregated"] == 4
        body = 4 * n * 10 * D + 4 * n * 10 + 4 * n          # jacobian + outputs + labels, float32
        assert body <= row["bytes_up"] <= body + 4 * HEADER_SLACK, (row["bytes_up"], body)
        assert row["ntk_tau"] in (10, 100, 1000)
    # learns faster than FedAvg per round (NTK-FL's claim; BENCHMARKS: 2.25x fewer rounds to 90%):
    # its best accuracy in these 6 rounds beats plain FedAvg's on the same clients, rounds, seed
    # (computed here; best of 6 since the kernel step oscillates early. Measured 0.64 vs 0.53)
    fedavg = _fedavg_best_accuracy(tmp_path)
    assert max(r["accuracy"] for r in full) > fedavg, ([r["accuracy"] for r in full], fedavg)

    cp = simulate(_cfg(tmp_path, "cp", ntk_project=256, ntk_subsample=0.5, ntk_shuffle=True)).metrics
    for row in cp:
        n = sum(math.ceil(0.5 * int(sizes[c])) for c in row["accepted_clients"])
        assert row["ntk_samples"] == n
        body = 4 * n * 10 * 256 + 4 * n * 10 + 4 * n
        assert body <= row["bytes_up"] <= body + 4 * HEADER_SLACK
    # CP-NTK-FL (half the samples, d' = 256) keeps pace with FedAvg too (measured 0.54 vs 0.53)
    assert max(r["accuracy"] for r in cp) > fedavg, ([r["accuracy"] for r in cp], fedavg)


def _fedavg_best_accuracy(tmp_path) -> float:
    """Best test accuracy of plain FedAvg over the same 6 rounds, clients and seed (in process)."""
    from helpers import in_process_run

    cfg = _cfg(tmp_path, "fedavg-baseline", strategy="fedavg")
    run = in_process_run(tmp_path / "fedavg", **{k: getattr(cfg, k) for k in
                                                 ("dataset", "clients", "partition", "per_round", "rounds", "seed")},
                         strategy="fedavg")
    return max(m["accuracy"] for m in run.metrics)


def test_served_ntk_two_rounds(tmp_path):
    from thinwire.collective.group import free_port

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--out-dir", str(tmp_path), "--name", "served", "--no-progress", "--clients", "4", "--per-round", "2",
         "--rounds", "2", "--strategy", "ntk", "--ntk-taus", "10,50", "--ntk-eta", "0.05", "--linger", "2"],
        # no --max-update-mb: the ntk strategy sizes the push limit for its Jacobian results
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, env=env)
    client = subprocess.Popen(
        [sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server", f"127.0.0.1:{port}",
         "--client-id-start", "0", "--virtual-clients", "4", "--parallel", "2", "--max-wait", "60"],
        stdout=open(tmp_path / "client.log", "w"), stderr=subprocess.STDOUT, env=env)
    try:
        assert server.wait(300) == 0, (tmp_path / "server.log").read_text()[-2000:]
    finally:
        for p in (server, client):
            if p.poll() is None:
                p.kill()
            p.wait()
    rows = [json.loads(x) for x in (tmp_path / "served" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["round"] for r in rows] == [0, 1]
    assert all(r["aggregated"] == 2 and r["ntk_tau"] in (10, 50) and r["bytes_up"] > 4 * 10 * D for r in rows)
