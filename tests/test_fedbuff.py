"""FedBuff (issue 22) on the one round engine: staleness weights, K folds per server step, clients
whose work spans steps, equivalence with FedAvg without staleness, and resume mid-buffer."""
from __future__ import annotations

import heapq
import json
import math
import os
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from thinwire import compression
from thinwire.config import RunConfig, build
from thinwire.errors import ConfigError
from thinwire.server.rounds import Arrival, RoundEngine
from thinwire.server.strategy import make_strategy
from thinwire.server.strategy.fedbuff import (FedBuff, WEIGHT_BITS, hinge_weight, parse_staleness,
                                              polynomial_weight, quantized_weight)

NUMEL = 4


# -- staleness weights --------------------------------------------------------------------------
def test_staleness_weights_follow_their_formulas():
    s = np.arange(0, 50)
    assert [parse_staleness("constant")(int(v)) for v in s] == [1.0] * len(s)
    for a in (0.0, 0.5, 1.0, 2.5):
        w = parse_staleness(f"polynomial:{a}")
        assert np.allclose([w(int(v)) for v in s], (1.0 + s) ** -a, rtol=1e-15, atol=0)
    for a, b in ((1.0, 0), (10.0, 4), (0.5, 2.5)):
        w = parse_staleness(f"hinge:{a},{b}")
        want = np.where(s <= b, 1.0, 1.0 / (a * (s - b) + 1.0))
        assert np.allclose([w(int(v)) for v in s], want, rtol=1e-15, atol=0)
    # w(0) = 1 for every rule: a fresh result is FedAvg's
    assert polynomial_weight(0, 3.0) == hinge_weight(0, 7.0, 0) == 1.0
    # the 2**-10 grid of the exact sum: |q/1024 - w| <= 1/2048 (and a result always counts)
    for w in (1.0, 0.7071, 1 / 3, 1e-9):
        q = quantized_weight(w)
        assert q >= 1 and (abs(q / (1 << WEIGHT_BITS) - w) <= 0.5 / (1 << WEIGHT_BITS) or q == 1)


@pytest.mark.parametrize("spec", ["poly:1", "polynomial", "polynomial:-1", "hinge:1", "hinge:a,b", "constant:2",
                                  "polynomial:nan"])
def test_bad_staleness_specs_name_the_field(spec):
    with pytest.raises(ConfigError, match="staleness"):
        RunConfig(strategy="fedbuff", staleness=spec, progress=False).validate()


@pytest.mark.parametrize("kw, field", [(dict(concurrency=5, buffer_size=6), "concurrency"),
                                       (dict(deadline=3.0), "deadline"), (dict(overcommit=1.5), "overcommit"),
                                       (dict(buffer_size=200), "buffer_size"), (dict(concurrency=101), "concurrency")])
def test_fedbuff_settings_are_checked(kw, field):
    with pytest.raises(ConfigError, match=field):
        RunConfig(strategy="fedbuff", clients=100, per_round=10, progress=False, **kw).validate()


# -- a transport on a virtual clock whose clients take fixed times --------------------------------
def _payload(delta: torch.Tensor) -> bytes:
    """identity-coded bytes built by hand (the codec itself refuses to encode a NaN)."""
    return compression.Encoded(codec="identity", params={}, numel=delta.numel(),
                               sections={"values": delta.float().numpy().tobytes()}).to_bytes()


class Clocked:
    """Every dispatched client's result arrives `durations[cid]` after its step started; results
    not taken by a step stay queued for the next (asynchronous work spanning steps). The delta of
    (client c, version v) is c + 1 + v/100 in every coordinate, so each fold is identifiable."""
    clock = "virtual"
    segments = None
    refusal_is_final = True

    def __init__(self, clients: int, durations: dict[int, float]):
        self.clients, self.durations = clients, durations
        self.t0 = 0.0              # absolute time the current step started
        self.t = 0.0               # absolute now
        self.heap: list = []
        self.dispatched: list[tuple[int, int]] = []

    def candidates(self, rnd):
        return list(range(self.clients))

    def open_round(self, rnd, vec, tasks):
        self.t0 = self.t
        for cid in sorted(tasks):
            self.dispatched.append((cid, rnd))
            delta = torch.full((NUMEL,), cid + 1 + rnd / 100)
            heapq.heappush(self.heap, (self.t + self.durations[cid], cid, rnd, _payload(delta)))

    def now(self):
        return self.t - self.t0

    def next_event(self, until):
        if self.heap and self.heap[0][0] - self.t0 <= until:
            t, cid, rnd, payload = heapq.heappop(self.heap)
            self.t = max(self.t, t)
            return Arrival(cid, rnd, rnd, payload, {"num_samples": 2.0}, t - self.t0)
        if not math.isinf(until):
            self.t = self.t0 + until
        return None

    def close_round(self, rnd, keep_late):
        if not keep_late:                      # synchronous: what was not taken is late
            self.heap = []
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def _cfg(tmp_path, **kw):
    base = dict(name="fb", out_dir=str(tmp_path), clients=8, per_round=3, rounds=12, progress=False,
                strategy="fedbuff", buffer_size=3, concurrency=5, server_momentum=0.0, staleness="polynomial:1")
    base.update(kw)
    return build(RunConfig, base)


def test_a_buffer_of_k_folds_exactly_k_per_step_with_work_spanning_steps(tmp_path):
    cfg = _cfg(tmp_path)
    durations = {c: 1.0 + 0.73 * c for c in range(cfg.clients)}      # client 7 takes 6x client 0
    tr = Clocked(cfg.clients, durations)
    eng = RoundEngine(cfg, tr, torch.zeros(NUMEL), checkpoints=False)
    eng.run()
    rows = eng.metrics
    assert [r["aggregated"] for r in rows] == [3] * cfg.rounds
    assert all(r["in_flight"] == 5 - 3 for r in rows)                # finished ones replaced at once
    assert rows[0]["selected"] == 5 and all(r["selected"] == 3 for r in rows[1:])
    assert max(r["staleness_max"] for r in rows) >= 2 and any(r["delayed_accepted"] > 0 for r in rows)
    # Recompute every step from the dispatch log and the clock: which results each step folds, their
    # staleness, and the model (server lr 1, no momentum): x += sum n w(s) delta / sum n.
    heap = []
    started = list(tr.dispatched)
    t, x = 0.0, torch.zeros(NUMEL, dtype=torch.float64)
    w = parse_staleness(cfg.staleness)
    for step, row in enumerate(rows):
        for cid, v in [d for d in started if d[1] == step]:
            heapq.heappush(heap, (t + durations[cid], cid, v))
        folds = [heapq.heappop(heap) for _ in range(3)]
        t = folds[-1][0]
        stale = [step - v for _, _, v in folds]
        assert row["staleness_max"] == max(stale) and row["staleness_mean"] == pytest.approx(np.mean(stale))
        assert row["accepted_clients"] == [c for _, c, _ in folds]
        assert row["time"] == pytest.approx(t)
        x += sum(quantized_weight(w(s)) / 1024 * (c + 1 + v / 100) for (_, c, v), s in zip(folds, stale)) / 3
    # float32 model: each step rounds the mean step and the sum (half an ulp each, <= 2**-24 |x| for
    # |step| <= |x|) and the deltas sit on the exact sum's 2**-32 grid
    tol = cfg.rounds * (2 * 2 ** -24 * float(x.abs().max()) + 2 ** -32)
    assert torch.allclose(eng.global_vec.double(), x, rtol=0, atol=tol)
    # every result folded once: (client, version) pairs of all folds are distinct
    folded = [tuple(p) for r in rows for p in r["folded"]]
    assert len(folded) == len(set(folded)) == 3 * cfg.rounds


def test_fedasync_is_a_buffer_of_one(tmp_path):
    cfg = _cfg(tmp_path, buffer_size=1, concurrency=3, rounds=20)
    tr = Clocked(cfg.clients, {c: 1.0 + 0.37 * c for c in range(cfg.clients)})
    eng = RoundEngine(cfg, tr, torch.zeros(NUMEL), checkpoints=False)
    eng.run()
    assert [r["aggregated"] for r in eng.metrics] == [1] * 20
    assert all(r["in_flight"] == 2 for r in eng.metrics)


def test_equal_to_fedavg_when_nothing_is_stale(tmp_path):
    """concurrency = K = per_round: every step waits for all it started, like synchronous FedAvg;
    the same clients are drawn (the policy's stream) and w(0) = 1, so the model is FedAvg's bit for
    bit (the staleness weight 1 is 1024/1024 on the exact sum's grid: power-of-two scalings)."""
    durations = {c: 1.0 + 0.5 * c for c in range(8)}
    cfg_b = _cfg(tmp_path, name="b", buffer_size=3, concurrency=3)
    cfg_a = _cfg(tmp_path, name="a", strategy="fedavg")
    a = RoundEngine(cfg_a, Clocked(8, durations), torch.zeros(NUMEL), checkpoints=False)
    b = RoundEngine(cfg_b, Clocked(8, durations), torch.zeros(NUMEL), checkpoints=False)
    a.run(), b.run()
    assert [r["accepted_clients"] for r in a.metrics] == [r["accepted_clients"] for r in b.metrics]
    assert all(r["staleness_max"] == 0 for r in b.metrics)
    assert torch.equal(a.global_vec, b.global_vec)


def test_a_refused_result_frees_its_slot(tmp_path):
    cfg = _cfg(tmp_path, rounds=4)

    class OneBad(Clocked):
        def next_event(self, until):
            ev = super().next_event(until)
            if isinstance(ev, Arrival) and (ev.client_id, ev.round) == (tr.dispatched[0][0], 0):
                ev.payload = _payload(torch.full((NUMEL,), float("nan")))
            return ev

    tr = OneBad(cfg.clients, {c: 1.0 + 0.73 * c for c in range(cfg.clients)})
    eng = RoundEngine(cfg, tr, torch.zeros(NUMEL), checkpoints=False)
    eng.run()
    assert [r["aggregated"] for r in eng.metrics] == [3] * 4 and eng.metrics[0]["rejected_pushes"] == 1
    # step 0 ends with one client fewer in flight; step 1 starts K + 1 and the fleet is whole again
    assert [r["in_flight"] for r in eng.metrics] == [1, 2, 2, 2] and eng.metrics[1]["selected"] == 4
    assert torch.isfinite(eng.global_vec).all()


def test_checkpoint_records_who_is_in_flight_and_resume_restarts_them(tmp_path):
    cfg = _cfg(tmp_path, rounds=5)
    s = make_strategy(cfg)
    assert isinstance(s, FedBuff) and s.K == 3 and s.C == 5
    tr = Clocked(cfg.clients, {c: 1.0 + 0.73 * c for c in range(cfg.clients)})
    eng = RoundEngine(cfg, tr, torch.zeros(NUMEL))
    eng.run()
    ckpt = torch.load(tmp_path / "fb" / "checkpoint.pt", weights_only=False)
    flying = ckpt["strategy"]["in_flight"]
    assert len(flying) == 2 and all(v < 5 for v in flying.values())
    cfg2 = _cfg(tmp_path, rounds=6)
    tr2 = Clocked(cfg2.clients, tr.durations)
    eng2 = RoundEngine(cfg2, tr2, torch.zeros(NUMEL), resume=True)
    eng2.run()
    # step 5 restarts the two on the current model and adds K new ones: C in flight again
    assert set(flying) <= {c for c, v in tr2.dispatched if v == 5} and len(tr2.dispatched) == 5
    assert eng2.metrics[0]["aggregated"] == 3 and eng2.metrics[0]["in_flight"] == 2


# -- on the real simulator (Ray workers, the fault model's virtual clock) ------------------------
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
SIM = dict(clients=12, per_round=4, local_epochs=1, workers=1, seed=5, lr=0.1, profile="mobile",
           stragglers="iid", straggler_prob=0.3, straggler_slowdown=8.0, codec="topk:fraction=0.3", feedback="ef")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_mid_buffer_loses_and_doubles_nothing(tmp_path):
    """SIGKILL right after a fold of a result of step 3 (mid-buffer), then --resume: steps 0-3 are kept as they
    were, the buffer of step 4 is refilled from scratch, the clients in flight at the checkpoint
    are started again, and no (client, version) result is folded twice."""
    args = ["--strategy", "fedbuff", "--buffer-size", "4", "--concurrency", "8", "--out-dir", str(tmp_path),
            "--no-progress"] + [f"--{k.replace('_', '-')}={v}" for k, v in SIM.items()]
    cmd = [sys.executable, "-m", "thinwire.cli", "simulate", "--name", "crash", "--rounds", "6", *args]
    p = subprocess.run(cmd, env={**ENV, "THINWIRE_CRASH_AT": "after_fold:round=3"}, capture_output=True, text=True,
                       timeout=200)
    assert p.returncode != 0                                      # killed by the crash point
    run = tmp_path / "crash"
    before = _rows(run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    crashed_at = ckpt["round"] + 1
    assert [r["round"] for r in before] == list(range(crashed_at)) and crashed_at >= 2
    flying = ckpt["strategy"]["in_flight"]
    assert len(flying) == 8 - 4
    p = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = _rows(run)
    assert [r["round"] for r in rows] == list(range(6))
    assert rows[:crashed_at] == before                          # nothing before the crash rewritten
    assert all(r["aggregated"] == 4 and r["in_flight"] == 4 for r in rows)
    folded = [tuple(p) for r in rows for p in r["folded"]]
    assert len(folded) == len(set(folded)) == 4 * 6              # nothing counted twice
    # nothing lost: every client in flight at the checkpoint is started again at the step resumed
    # from, beside K new ones, and C clients stay in flight to the end
    resumed = rows[crashed_at]
    assert set(int(c) for c in flying) <= set(resumed["started"]) and resumed["selected"] == 8


# -- served == simulated under the same arrival order --------------------------------------------
# The order in which results reach the server is the one thing that may differ between the modes
# (the simulator's virtual clock vs processes on a loaded machine), so the served run is told the
# simulated order (THINWIRE_ARRIVAL_ORDER: the server hands results to the engine in that order);
# everything else -- which clients start when, the tasks, the model versions they fetch after their
# step closed, the pushes carried into later steps, the staleness weights -- is the served code's.
TRACE = "client_id,speed,up_mbps,down_mbps,latency_ms\n0,0.26,1000,1000,0\n1,0.16,1000,1000,0\n2,0.19,1000,1000,0\n"
SERVED = dict(clients=3, per_round=3, strategy="fedbuff", buffer_size=1, concurrency=2, rounds=6, local_epochs=1,
              seed=1, lr=0.1, codec="identity", profile="trace", staleness="polynomial:0.5")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_served_fedbuff_with_three_client_processes_equals_simulation(tmp_path):
    from thinwire.sim.engine import simulate

    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    settings = {**SERVED, "trace": str(trace)}
    sim = simulate(RunConfig(name="sim", out_dir=str(tmp_path), progress=False, workers=1, **settings))
    rows_sim = _rows(sim.run_dir)
    assert max(r["staleness_max"] for r in rows_sim) >= 1          # work did span steps
    order = ",".join(f"{c}:{v}" for r in rows_sim for c, v in r["folded"])
    port_file = tmp_path / "port"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    srv = subprocess.Popen([sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--host", "127.0.0.1",
                            "--port", "0", "--port-file", str(port_file), "--out-dir", str(tmp_path), "--name",
                            "served", "--no-progress", "--linger", "1", "--heartbeat-interval", "0.2", *args],
                           stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
                           env={**ENV, "THINWIRE_ARRIVAL_ORDER": order})
    clients = []
    try:
        while not port_file.exists():
            assert srv.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.05)
        for i in range(3):
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server",
                 f"127.0.0.1:{port_file.read_text()}", "--client-id-start", str(i), "--virtual-clients", "1",
                 "--max-wait", "60"], stdout=open(tmp_path / f"client{i}.log", "w"), stderr=subprocess.STDOUT, env=ENV))
        assert srv.wait(240) == 0, (tmp_path / "server.log").read_text()[-3000:]
        for i, c in enumerate(clients):
            assert c.wait(60) == 0, (tmp_path / f"client{i}.log").read_text()[-3000:]
    finally:
        for p in [srv, *clients]:
            if p.poll() is None:
                p.kill()
    rows_srv = _rows(tmp_path / "served")
    same = ("round", "started", "folded", "staleness_max", "staleness_mean", "in_flight", "aggregated", "accuracy")
    assert [{k: r[k] for k in same} for r in rows_srv] == [{k: r[k] for k in same} for r in rows_sim]
    g_sim = torch.load(sim.run_dir / "checkpoint.pt", weights_only=True)["global"]
    g_srv = torch.load(tmp_path / "served" / "checkpoint.pt", weights_only=True)["global"]
    assert torch.allclose(g_sim, g_srv, rtol=0, atol=1e-6), (g_sim - g_srv).abs().max()
