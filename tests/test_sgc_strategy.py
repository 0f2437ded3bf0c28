"""Sequential gradient coding on the round engine: coded training follows the uncoded trajectory
(decoding is exact), the engine's virtual clock reproduces the scheme runtime simulator, the
float32 hi/lo wire form keeps decoding exact, checkpoints of scheme state resume, bad settings
are one-line errors, and the served mode (worker processes, emulated stragglers) equals simulate."""
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

from thinwire.config import RunConfig
from thinwire.errors import ConfigError

N, JOBS = 6, 8
COMMON = dict(clients=N, per_round=N, dataset="digits", model="mlp", hidden=[16], lr=0.5, seed=5, job_batch=120,
              models=2, profile="datacenter", stragglers="bursty", straggler_bursty=[1, 2, 2], straggler_prob=0.3,
              load0_s=0.5, compute_per_sample=2.0 / 120, mu=1.0, progress=False, eval_every=100)
SCHEMES = {"uncoded": ({}, 0), "gc": ({"gc_s": 2}, 0), "sr-sgc": ({"sgc_b": 1, "sgc_w": 2, "sgc_lambda": 2}, 1),
           "m-sgc": ({"sgc_b": 1, "sgc_w": 2, "sgc_lambda": 2}, 1)}


def _cfg(tmp_path, name, **kw) -> RunConfig:
    extra, T = SCHEMES[name]
    return RunConfig(name=name, out_dir=str(tmp_path), strategy=name, rounds=JOBS + T, **{**COMMON, **extra, **kw})


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from thinwire.sim.engine import WorkerPool, simulate

    tmp = tmp_path_factory.mktemp("sgc")
    pool = WorkerPool(_cfg(tmp, "uncoded", workers=2).validate())
    try:
        out = {}
        for name in SCHEMES:
            res = simulate(_cfg(tmp, name, workers=2), pool=pool)
            out[name] = (torch.load(res.run_dir / "checkpoint.pt", weights_only=True)["global"], _rows(res.run_dir))
        return out
    finally:
        pool.close()


def test_coded_training_equals_uncoded_training(runs):
    from thinwire.data.datasets import dataset_from_config
    from thinwire.training import build_run_model

    ref, ref_rows = runs["uncoded"]
    cfg = _cfg("/tmp", "uncoded").validate()
    init, _, _ = build_run_model(cfg, dataset_from_config(cfg))
    assert ref.numel() == 2 * init.numel()
    assert (ref - init.repeat(2)).norm() > 1e-2 * init.norm()      # the models really trained
    assert all(r["sgc_stragglers"] == 0 for r in ref_rows)         # uncoded tolerates nobody
    # ... so it waits in exactly the rounds where some worker is slower than (1 + mu) x the fastest
    # (the delay profile at the scheme's load: load-0 time + load x job_batch x compute_per_sample)
    from thinwire.faults.network import NetworkModel
    from thinwire.faults.stragglers import delay_profile
    from thinwire.server.strategy.sgc import scheme_for

    d = delay_profile(NetworkModel.from_config(cfg).bursty_profile()[1], scheme_for(cfg).load,
                      cfg.job_batch * cfg.compute_per_sample)
    slow_rounds = int((d[:N, :JOBS] > (1 + cfg.mu) * d[:N, :JOBS].min(0)).any(0).sum())
    assert sum(r["waited"] for r in ref_rows) == slow_rounds >= 1, slow_rounds
    losses = [r["train_loss"] for r in ref_rows]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    for name in ("gc", "sr-sgc", "m-sgc"):
        got, rows = runs[name]
        # the stragglers each round closed without are those the runtime simulator's scheme records
        # on the same delay profile (its tolerated rounds), in total
        tolerated = _tolerated_stragglers(name)
        assert sum(r["sgc_stragglers"] for r in rows) == tolerated >= 1, (name, tolerated)
        assert sorted(j for r in rows for j in r["decoded_jobs"]) == list(range(JOBS))
        assert (got - ref).abs().max() < 1e-5, (name, float((got - ref).abs().max()))
        assert np.allclose([r["train_loss"] for r in rows if r["train_loss"] is not None], losses, atol=1e-6)


def _tolerated_stragglers(name: str) -> int:
    """Stragglers the runtime simulator's scheme is told it closed rounds without (its `record`
    calls' straggler masks; zero in waited and skipped rounds), summed over the run."""
    from thinwire.coding.runtime import simulate as runtime
    from thinwire.faults.network import NetworkModel
    from thinwire.server.strategy.sgc import scheme_for

    cfg = _cfg("/tmp", name).validate()
    sch, seen = scheme_for(cfg), []
    record = sch.record

    def counting_record(plan, received, stragglers=None, **kw):
        seen.append(0 if stragglers is None else int(np.sum(stragglers)))
        return record(plan, received, stragglers=stragglers, **kw)

    sch.record = counting_record
    load0 = NetworkModel.from_config(cfg).bursty_profile()[1]
    runtime(sch, load0, cfg.mu, sec_per_load=cfg.job_batch * cfg.compute_per_sample)
    return sum(seen)


def test_virtual_clock_matches_the_scheme_runtime_simulator(runs):
    """Round times of the engine run = the runtime simulator's on the same delay profile (load-0 time
    + load x job_batch x compute_per_sample), up to the datacenter profile's ~0.5 ms of network."""
    from thinwire.faults.network import NetworkModel
    from thinwire.coding.runtime import simulate as runtime
    from thinwire.server.strategy.sgc import scheme_for

    for name in SCHEMES:
        cfg = _cfg("/tmp", name).validate()
        load0 = NetworkModel.from_config(cfg).bursty_profile()[1]
        ref = runtime(scheme_for(cfg), load0, cfg.mu, sec_per_load=cfg.job_batch * cfg.compute_per_sample)
        rows = runs[name][1][: ref.rounds]
        assert sum(r["waited"] for r in rows) == ref.waits
        assert np.allclose([r["round_time"] for r in rows], ref.durations, rtol=0, atol=2e-3), name


def test_hi_lo_messages_decode_exactly_where_float32_would_not():
    from thinwire.coding.jobs import join_hi_lo, split_hi_lo
    from thinwire.coding.matrices import make_decoder

    n, s, d = 24, 7, 2000
    dec = make_decoder("cyclic", n, s, seed=1)
    rng = np.random.default_rng(0)
    parts = rng.standard_normal((n, d))
    msgs = torch.from_numpy(dec.B @ parts)
    rows, a = dec.coefficients(rng.permutation(n)[: n - s])
    full = parts.sum(0)

    def err(wire):
        got = sum(float(c) * wire(msgs[r]).numpy() for r, c in zip(rows, a))
        return np.linalg.norm(got - full) / np.linalg.norm(full)

    e_hilo = err(lambda m: join_hi_lo(split_hi_lo(m)))
    e_f32 = err(lambda m: m.float().double())
    assert e_hilo < 1e-10 < 1e-6 < e_f32 * 10          # hi/lo: exact for training; float32 alone: not
    assert np.abs(a).max() > 10                          # the coefficients that make float32 lose digits


def test_scheme_state_survives_a_checkpoint_round_trip():
    from thinwire.faults.stragglers import bursty_pattern
    from thinwire.coding.schemes import make_scheme

    n, J, B, W, lam = 10, 20, 2, 3, 4
    pat = bursty_pattern(n, J + W + B, B, W, lam, 0.4, seed=2)
    for name in ("sr-sgc", "m-sgc"):
        straight, resumed = make_scheme(name, n, J, B=B, W=W, lam=lam), None
        for r in range(pat.shape[1]):
            if r == 9:       # "crash" here: a fresh object loads the state (through torch.save, weights only)
                import io
                buf = io.BytesIO()
                torch.save(straight.state_dict(), buf)
                resumed = make_scheme(name, n, J, B=B, W=W, lam=lam)
                resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
            for sch in (straight, resumed) if resumed is not None else (straight,):
                plan = sch.plan(r)
                assert sch.tolerable(r, plan, pat[:, r])
                sch.record(plan, ~pat[:, r])
        assert straight.decoded == resumed.decoded and len(straight.decoded) == J
        assert np.array_equal(straight.hist, resumed.hist)


@pytest.mark.parametrize("kw,field", [
    (dict(strategy="gc", per_round=4), "per_round"),
    (dict(strategy="gc", gc_s=8), "gc_s"),
    (dict(strategy="gc", gc_s=2, gc_code="fractional"), "gc_s"),
    (dict(strategy="sr-sgc", sgc_b=2, sgc_w=4), "sgc_w"),
    (dict(strategy="m-sgc", sgc_lambda=9), "sgc_lambda"),
    (dict(strategy="m-sgc", sgc_w=3, sgc_b=2, models=2), "models"),
    (dict(strategy="m-sgc", sgc_w=3, sgc_b=2, rounds=3), "rounds"),
    (dict(strategy="gc", deadline=5.0), "deadline"),
    (dict(stragglers="bursty", straggler_bursty=[2, 2, 3]), "straggler_bursty"),
])
def test_bad_gradient_coding_settings_name_the_field(kw, field):
    base = dict(clients=8, per_round=8, rounds=10, progress=False)
    with pytest.raises(ConfigError) as e:
        RunConfig(**{**base, **kw}).validate()
    assert e.value.field == field


# -- served: n worker processes on loopback with emulated stragglers == simulate -------------------
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_served_gc_with_emulated_stragglers_equals_simulate(tmp_path):
    from thinwire.sim.engine import simulate

    n, rounds = 4, 5
    settings = dict(clients=n, per_round=n, rounds=rounds, strategy="gc", gc_s=1, seed=2, lr=0.5, job_batch=64,
                    hidden=[16], profile="datacenter", stragglers="bursty", straggler_bursty=[1, 2, 1],
                    straggler_prob=0.3, load0_s=0.2, compute_per_sample=0.002)
    sim = simulate(RunConfig(name="sim", out_dir=str(tmp_path), progress=False, workers=1, **settings))
    port_file = tmp_path / "port"
    args = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in settings.items()]
    srv = subprocess.Popen([sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--host", "127.0.0.1",
                            "--port", "0", "--port-file", str(port_file), "--out-dir", str(tmp_path), "--name", "served",
                            "--no-progress", "--linger", "1", "--emulate", *args],
                           stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, env=ENV)
    cli = None
    try:
        t_end = time.monotonic() + 60
        while not port_file.exists():
            assert srv.poll() is None and time.monotonic() < t_end, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        cli = subprocess.Popen([sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server",
                                f"127.0.0.1:{port_file.read_text()}", "--virtual-clients", str(n), "--parallel", str(n),
                                "--max-wait", "60"],
                               stdout=open(tmp_path / "client.log", "w"), stderr=subprocess.STDOUT, env=ENV)
        assert srv.wait(200) == 0, (tmp_path / "server.log").read_text()[-3000:]
        assert cli.wait(60) == 0, (tmp_path / "client.log").read_text()[-3000:]
    finally:
        for p in (srv, cli):
            if p is not None and p.poll() is None:
                p.kill()
    g_sim = torch.load(sim.run_dir / "checkpoint.pt", weights_only=True)["global"]
    g_srv = torch.load(tmp_path / "served" / "checkpoint.pt", weights_only=True)["global"]
    rows = _rows(tmp_path / "served")
    assert [r["round"] for r in rows] == list(range(rounds))
    assert sorted(j for r in rows for j in r["decoded_jobs"]) == list(range(rounds))
    assert any(r["stragglers"] for r in rows)                      # the emulation did straggle someone
    assert (g_sim - g_srv).abs().max() < 1e-5, float((g_sim - g_srv).abs().max())
    assert (g_sim - g_srv).abs().max() < 1e-3 * (g_sim - g_sim.mean()).abs().max()


def test_bursty_network_model_is_the_sgc_delay_profile():
    """--stragglers bursty: a (B, W, lambda)-conforming pattern over the fleet, stragglers slower
    than (1 + 1) x the fastest, and compute = load-0 time + work x seconds per sample / speed."""
    from thinwire.faults.network import NetworkModel
    from thinwire.faults.stragglers import pattern_conforms

    cfg = RunConfig(clients=40, per_round=40, rounds=60, stragglers="bursty", straggler_bursty=[2, 3, 6],
                    straggler_prob=0.2, straggler_slowdown=2.3, profile="datacenter", compute_per_sample=0.01,
                    progress=False).validate()
    net = NetworkModel.from_config(cfg)
    pat, load0 = net.bursty_profile()
    assert pat.shape == load0.shape == (40, 60) and pat.sum() > 20 and pattern_conforms(pat, 2, 3, 6)
    fast = load0.min(axis=0)
    assert np.array_equal(load0 > 2 * fast, pat)            # the pattern is exactly who misses mu = 1
    for k, r in [(0, 0), (7, 13), (39, 59)]:
        assert net.compute_time(k, r, 30) == pytest.approx(load0[k, r] + 30 * 0.01)
        assert net.straggler_factor(k, r) == (2.3 if pat[k, r] else 1.0)
    assert NetworkModel.from_config(cfg).bursty_profile()[1].tolist() == load0.tolist()   # seeded
