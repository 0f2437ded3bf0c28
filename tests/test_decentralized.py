"""Decentralized engine: the Ray/gloo path equals the single-process reference, the split, the clock, config."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import thinwire
from thinwire.cli import main
from thinwire.gossip.config import DecentralizedConfig, load_data, shards
from thinwire.gossip.engine import Graph, LocalEngine
from thinwire.errors import ConfigError
from thinwire.faults.network import NetworkModel
from thinwire.gossip.clock import GossipClock
from thinwire.data.partition import label_pairs_partition


def _cfg(**kw) -> DecentralizedConfig:
    base = dict(workers=3, epochs=1, batch_size=8, lr=0.05, l1=1e-3, engine="local", progress=False, plots=False)
    base.update(kw)
    return DecentralizedConfig(**base).validate()


@pytest.mark.slow
def test_ray_gloo_peers_give_the_reference_numbers():
    """Same step, different communicator: actors over torch.distributed p2p == threads over memory, bit for bit."""
    from thinwire.gossip.engine import GossipPeer, RayEngine
    from thinwire.collective.group import PeerGroup

    with PeerGroup(GossipPeer, 4, "gloo", threads=1) as group:
        for algo, codec in (("cdproxsgt", "topk:fraction=0.3"), ("dproxsgt", "identity"), ("choco", "qsgd:levels=4"),
                            ("allreduce", "identity")):
            cfg = _cfg(algorithm=algo, codec=codec, threads=1, workers=4)  # a 4-ring: 3 would be complete
            g = Graph.of(cfg)
            ds = load_data(cfg)
            local = LocalEngine(cfg, g, ds, shards(cfg, ds))
            ray_engine = RayEngine(cfg, g, group)
            steps = 3
            rec_l, rec_r = local.train(0, steps), ray_engine.train(0, steps)
            for a, b in zip(local.models(), ray_engine.models()):
                assert torch.equal(a, b), (algo, float((a - b).abs().max()))
            assert local.models()[0].ne(local.models()[1]).any() or algo == "allreduce"
            assert rec_l == rec_r, algo  # minibatch losses and message sizes, step by step
            assert local.bytes_sent() == ray_engine.bytes_sent()


def test_label_pairs_split_is_the_papers():
    y = np.repeat(np.arange(10), 13)
    parts = label_pairs_partition(y, 5, seed=1)
    assert [sorted(set(y[p].tolist())) for p in parts] == [[i, 9 - i] for i in range(5)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    more = label_pairs_partition(y, 7, seed=1)  # 7 > 5 pairs: pairs 0 and 1 are shared by two peers each
    assert sorted(np.concatenate(more).tolist()) == list(range(len(y)))
    assert set(y[more[5]].tolist()) == {0, 9} and abs(len(more[0]) - len(more[5])) <= 1


def test_clock_waits_for_the_slowest_neighbour(tmp_path):
    """A straggler's delay reaches its neighbours in one exchange and the next ring hop in the next."""
    trace = tmp_path / "s.csv"
    trace.write_text("client_id,round,slowdown\n0,0,10\n")
    net = NetworkModel(profile="datacenter", compute_per_sample=0.01, stragglers="trace", straggler_trace=str(trace))
    nbrs = Graph.of(_cfg(workers=6)).nbrs  # ring 0-1-2-3-4-5-0
    clock = GossipClock(net, nbrs, batch_size=10)
    c, slow = 0.1, 1.0  # 10 samples x 0.01 s, peer 0 ten times slower in step 0
    hop = clock.send_time(0, 1, 1000)
    clock.step(0, [[1000]] * 6)  # one exchange: 0's neighbours wait for 0
    assert clock.time[0] == pytest.approx(slow)
    assert clock.time[1] == clock.time[5] == pytest.approx(slow + hop)
    assert clock.time[2] == clock.time[3] == pytest.approx(c + hop)
    clock.step(1, [[1000], [1000], [1000], [1000], [1000], [1000]])
    assert clock.time[2] == pytest.approx(slow + hop + c + hop)  # peer 1's delay arrives one hop later
    assert clock.time[3] == pytest.approx(2 * (c + hop))


def test_run_writes_metrics_and_counts_bytes_per_edge(tmp_path):
    """Per-epoch metrics; bytes per edge = steps x messages x message size (dense or the codec's)."""
    s_d = thinwire.decentralized(algorithm="dproxsgt", workers=3, epochs=1, engine="local", out_dir=str(tmp_path),
                                 name="d", progress=False, plots=False)
    s_c = thinwire.decentralized(algorithm="cdproxsgt", codec="topk:fraction=0.1", workers=3, epochs=1,
                                 engine="local", out_dir=str(tmp_path), name="c", progress=False, plots=True)
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    last = rows[-1]
    # the last row is the summary's final state, and each figure is what it says it is
    assert (last["accuracy"], last["local_accuracy"], last["consensus_error"], last["nonzero_pct"]) == (
        s_c["final_accuracy"], s_c["final_local_accuracy"], s_c["final_consensus_error"], s_c["final_nonzero_pct"])
    assert last["bytes_total"] == s_c["bytes_total"] and last["bytes_per_peer"] == s_c["bytes_total"] / 3
    assert last["time"] == s_c["simulated_time_s"] >= s_c["simulated_compute_s"]   # time = compute + waits/links
    from thinwire.data.loaders import load_dataset
    n_test = len(load_dataset("digits", seed=0).y_test)
    assert abs(last["accuracy"] * n_test - round(last["accuracy"] * n_test)) < 1e-6  # a count of test samples
    assert math.isfinite(last["train_loss"]) and rows[0]["train_loss"] is None     # no training before step 0
    assert (tmp_path / "c" / "consensus_vs_epoch.png").is_file()
    steps, d = s_d["steps"], s_d["params"]
    assert set(s_d["bytes_per_edge"].values()) == {steps * 2 * 4 * d}  # y and x, dense float32, each edge
    per_msg = s_c["bytes_per_edge"]["0->1"] / (2 * steps)
    assert 0.1 * 4 * d < per_msg < 0.2 * 4 * d  # 10% of the values plus a bitmap/int32 index and a header
    assert s_c["bytes_total"] == sum(s_c["bytes_per_edge"].values())
    assert rows[0]["time"] == 0.0 and rows[-1]["accuracy"] > rows[0]["accuracy"]


def test_l1_prox_makes_the_averaged_model_sparse(tmp_path):
    kw = dict(algorithm="allreduce", workers=3, epochs=1, engine="local", out_dir=str(tmp_path), progress=False,
              plots=False)
    dense = thinwire.decentralized(name="a", l1=0.0, **kw)
    sparse = thinwire.decentralized(name="b", l1=0.5, **kw)  # threshold lr*mu = 0.025 per step
    assert dense["final_nonzero_pct"] > 99.0
    assert sparse["final_nonzero_pct"] < 50.0


@pytest.mark.parametrize("flag,value,field", [("--topology", "star", "topology"), ("--codec", "nope", "codec"),
                                              ("--gamma-x", "0", "gamma_x"), ("--workers", "1", "workers"),
                                              ("--partition", "shards", "partition"),
                                              ("--mixing", "uniform-ring", "mixing")])
def test_bad_flags_are_one_line_errors(flag, value, field, capsys):
    argv = ["decentralized", "--engine", "local", flag, value]
    if flag == "--mixing":
        argv += ["--topology", "complete"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err


def test_config_rejects_bad_values_in_python():
    with pytest.raises(ConfigError, match="^algorithm: "):
        _cfg(algorithm="dsgd")
    with pytest.raises(ConfigError, match="^data_path: "):
        _cfg(dataset="fashion-mnist")


def test_bench_table_reports_accuracy_as_a_fraction():
    from thinwire.bench.decentralized import table

    def run(acc):
        return {"codec": "none", "final_accuracy": acc, "acc_last5": acc, "final_local_accuracy": acc,
                "final_consensus_error": 1e-3, "bytes_per_peer": 1e6, "final_nonzero_pct": 90.0,
                "simulated_time_s": 1.0, "wall_time_s": 1.0}

    text = table({"dproxsgt": [run(0.9389)], "cdproxsgt": [run(0.9444), run(0.9444)]})
    row = next(line for line in text.splitlines() if line.strip().startswith("cdproxsgt"))
    assert "0.9444 ± 0.0000" in row and "+0.0055" in row
    assert "acc x-bar %" not in text and "93.89" not in text
