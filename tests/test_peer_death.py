"""Peer engines and a lost peer (issue 24): `thinwire allreduce` and `thinwire decentralized` end a
run whose worker was killed -9 within a bounded time, with one line naming the lost rank and the
last completed step, leave no peer process behind, and `--resume` from the per-epoch checkpoint
reproduces the uninterrupted run bit for bit (every step is a pure function of the checkpointed
state, the seed and the step index; same thread count, same gloo reduction order)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from thinwire import checkpoint
from thinwire.bench.peerloss import FaultInjector as Killer
from thinwire.bench.peerloss import alive as _alive
from thinwire.bench.peerloss import wait_gone as _gone
from thinwire.cli import main
from thinwire.collective.config import AllreduceConfig
from thinwire.collective.engine import WorkerGroup, run_allreduce
from thinwire.collective.group import FAILURE_GRACE_S, PeerGroup, PeerLost
from thinwire.collective.worker import CollectiveWorker
from thinwire.errors import ConfigError
from thinwire.gossip.config import DecentralizedConfig
from thinwire.gossip.engine import GossipPeer, run_decentralized

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "thinwire"
PEER_TIMEOUT = 10.0
# Per-step metrics that must agree exactly between a whole run and a killed-and-resumed one
# (wall-clock fields such as elapsed and step_time cannot).
AR_KEYS = ("step", "accuracy", "loss", "bytes", "wire_bytes", "train_loss", "lr")
DEC_KEYS = ("round", "accuracy", "test_loss", "local_accuracy", "consensus_error", "objective", "train_loss",
            "bytes_total", "time")


def _rows(run_dir: Path, keys: tuple[str, ...]) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [tuple(r.get(k) for k in keys) for r in rows]


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the in-process runs; 8 logical CPUs so two groups fit side by side."""
    import warnings

    import ray
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _ar_cfg(tmp_path: Path, name: str, **kw) -> AllreduceConfig:
    base = dict(workers=2, method="defa", model="mlp", hidden=[16], batch_size=32, epochs=3, lr=0.05,
                lr_decay_at="0.5", out_dir=str(tmp_path), name=name, progress=False, plots=False,
                peer_timeout=PEER_TIMEOUT, threads=1)
    base.update(kw)
    return AllreduceConfig(**base).validate()


def _dec_cfg(tmp_path: Path, name: str, **kw) -> DecentralizedConfig:
    base = dict(workers=2, algorithm="cdproxsgt", codec="topk:fraction=0.3", l1=1e-3, hidden=[16], batch_size=64,
                epochs=3, engine="ray", backend="gloo", out_dir=str(tmp_path), name=name, progress=False,
                plots=False, peer_timeout=PEER_TIMEOUT, threads=1)
    base.update(kw)
    return DecentralizedConfig(**base).validate()


def _assert_lost(e: PeerLost, killer: Killer, rank: int, world: int) -> None:
    msg = str(e)
    assert killer.fired_at is not None
    took = time.monotonic() - killer.fired_at
    # a dead process is noticed by Ray at once; the bound users get is --peer-timeout
    assert took < PEER_TIMEOUT, took
    assert e.ranks == [rank] and f"rank {rank} of {world} lost" in msg and "process died" in msg, msg
    assert "last completed step" in msg and "--resume" in msg and "\n" not in msg, msg
    assert _gone(killer.pids), [p for p in killer.pids if _alive(p)]  # no orphan peer processes


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_allreduce_lost_worker_then_resume_equals_the_whole_run(ray_session, tmp_path):
    cfg = _ar_cfg(tmp_path, "killed")
    with WorkerGroup(2, "gloo", peer_timeout=PEER_TIMEOUT) as group:  # whole run, then the resumed one
        whole = group.run(_ar_cfg(tmp_path, "whole"))
        killer = Killer(cfg.run_dir, rank=1)
        killer.start()
        with pytest.raises(PeerLost) as ei:
            run_allreduce(cfg)  # its own group of workers, one of them killed
        _assert_lost(ei.value, killer, 1, 2)
        saved = checkpoint.load(cfg.run_dir)["epoch"]
        assert 1 <= saved < cfg.epochs  # killed mid-run, after the first checkpoint
        resumed = group.run(cfg, resume=True)
    a, b = checkpoint.load(tmp_path / "whole"), checkpoint.load(cfg.run_dir)
    assert a["epoch"] == b["epoch"] == cfg.epochs
    assert torch.equal(a["ranks"][0]["x"], b["ranks"][0]["x"])  # the model, bit for bit
    for ra, rb in zip(a["ranks"], b["ranks"]):  # momentum and DEF-A residual of every worker
        assert torch.equal(ra["m"], rb["m"]) and torch.equal(ra["memory"]["residual"], rb["memory"]["residual"])
    assert _rows(cfg.run_dir, AR_KEYS) == _rows(tmp_path / "whole", AR_KEYS)
    assert resumed["final_accuracy"] == whole["final_accuracy"] and resumed["steps"] == whole["steps"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_decentralized_lost_peer_then_resume_equals_the_whole_run(ray_session, tmp_path):
    cfg = _dec_cfg(tmp_path, "killed")
    with PeerGroup(GossipPeer, 2, "gloo", peer_timeout=PEER_TIMEOUT) as group:  # whole run, then the resumed one
        whole = run_decentralized(_dec_cfg(tmp_path, "whole"), group)
        killer = Killer(cfg.run_dir, rank=1)
        killer.start()
        with pytest.raises(PeerLost) as ei:
            run_decentralized(cfg)  # its own peers, one of them killed
        _assert_lost(ei.value, killer, 1, 2)
        assert 1 <= checkpoint.load(cfg.run_dir)["epoch"] < cfg.epochs
        resumed = run_decentralized(cfg, group, resume=True)
    a, b = checkpoint.load(tmp_path / "whole"), checkpoint.load(cfg.run_dir)
    for pa, pb in zip(a["peers"], b["peers"]):  # x, gradient tracker y and the public copies, every peer
        assert torch.equal(pa["x"], pb["x"]) and torch.equal(pa["y"], pb["y"])
        assert pa["hats"].keys() == pb["hats"].keys()
        for name in pa["hats"]:
            assert all(torch.equal(pa["hats"][name][j], pb["hats"][name][j]) for j in pa["hats"][name])
    assert a["clock"] == b["clock"]  # the simulated clock continues where it stopped
    assert _rows(cfg.run_dir, DEC_KEYS) == _rows(tmp_path / "whole", DEC_KEYS)
    assert resumed["final_accuracy"] == whole["final_accuracy"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_silent_peer_is_declared_lost_after_the_peer_timeout(ray_session):
    """SIGSTOP (alive, not answering): the survivor's gloo collective times out after --peer-timeout,
    the stopped rank gets FAILURE_GRACE_S more, then the group is torn down; no silent hang."""
    timeout = 3.0
    group = PeerGroup(CollectiveWorker, 2, "gloo", peer_timeout=timeout)
    pids = list(group.pids)
    try:
        os.kill(pids[1], signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(PeerLost) as ei:
            group.call("time_allreduce", 1000, 5)
        took = time.monotonic() - t0
    finally:
        group.close()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGCONT)
    assert ei.value.ranks == [1] and "no answer" in str(ei.value), str(ei.value)
    assert timeout <= took < timeout + FAILURE_GRACE_S + 5.0, took
    assert _gone(pids)


def test_decentralized_resume_continues_bit_for_bit_and_may_add_epochs(tmp_path):
    """Local engine (no Ray): 2 epochs, then --resume with --epochs 3 == 3 epochs in one go."""
    kw = dict(engine="local", workers=3, epochs=3, batch_size=32)
    run_decentralized(_dec_cfg(tmp_path, "whole", **kw))
    part = _dec_cfg(tmp_path, "part", **{**kw, "epochs": 2})
    run_decentralized(part)
    assert checkpoint.load(part.run_dir)["epoch"] == 2
    with pytest.raises(ConfigError) as ei:  # --epochs may grow on resume, not shrink below the checkpoint
        run_decentralized(_dec_cfg(tmp_path, "part", **{**kw, "epochs": 1}), resume=True)
    assert ei.value.field == "epochs"
    run_decentralized(_dec_cfg(tmp_path, "part", **kw), resume=True)
    a, b = checkpoint.load(tmp_path / "whole"), checkpoint.load(part.run_dir)
    assert all(torch.equal(pa["x"], pb["x"]) and torch.equal(pa["y"], pb["y"]) for pa, pb in zip(a["peers"], b["peers"]))
    assert _rows(part.run_dir, DEC_KEYS) == _rows(tmp_path / "whole", DEC_KEYS)


def test_resume_with_other_settings_or_a_foreign_checkpoint_is_refused(tmp_path):
    cfg = _dec_cfg(tmp_path, "r", engine="local", workers=3, epochs=1)
    run_decentralized(cfg)
    before = {p.name: p.read_bytes() for p in cfg.run_dir.iterdir()}
    with pytest.raises(ConfigError) as ei:
        run_decentralized(_dec_cfg(tmp_path, "r", engine="local", workers=3, epochs=1, lr=0.1, gamma_x=0.4),
                          resume=True)
    msg = str(ei.value)
    assert msg.startswith("resume:") and "lr: 0.05 -> 0.1" in msg and "gamma_x: 0.5 -> 0.4" in msg, msg
    with pytest.raises(ConfigError) as ei:  # a decentralized checkpoint is not an allreduce one
        run_allreduce(_ar_cfg(tmp_path, "r"), resume=True)
    assert "not a thinwire allreduce checkpoint" in str(ei.value) and "decentralized" in str(ei.value)
    assert {p.name: p.read_bytes() for p in cfg.run_dir.iterdir()} == before  # nothing touched


@pytest.mark.parametrize("argv", [["allreduce", "--peer-timeout", "0"], ["decentralized", "--peer-timeout", "-1"],
                                  ["decentralized", "--peer-timeout", "inf"]])
def test_peer_timeout_flag_is_checked(argv, tmp_path, capsys):
    assert main([*argv, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "peer_timeout" in err, err
    assert not any(tmp_path.iterdir())  # refused before any run directory was made


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_lost_worker_is_one_line_exit_2_and_no_orphans(tmp_path):
    run_dir = tmp_path / "cli"
    argv = [str(EXE), "allreduce", "--workers", "2", "--model", "mlp", "--hidden", "16", "--batch-size", "32",
            "--epochs", "30", "--out-dir", str(tmp_path), "--name", "cli", "--no-progress", "--no-plots",
            "--peer-timeout", str(PEER_TIMEOUT)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    killer = Killer(run_dir, rank=0)
    killer.start()
    out, err = proc.communicate(timeout=110)
    assert killer.fired_at is not None, err
    took = time.monotonic() - killer.fired_at
    assert proc.returncode == 2, (out, err)
    assert took < PEER_TIMEOUT + 10, took  # the bound plus Ray's shutdown
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("thinwire allreduce: error: peer failure: rank 0 of 2 lost during"), lines[0]
    assert "last completed step" in lines[0] and f"in {run_dir}: continue with --resume" in lines[0]
    assert _gone(killer.pids)
    # --resume under other settings: one line naming the field, the run directory untouched
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    r = subprocess.run([*argv, "--resume", "--lr", "0.1"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "lr: 0.05 -> 0.1" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
