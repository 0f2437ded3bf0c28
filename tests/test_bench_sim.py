"""Smoke test of `thinwire bench sim` at tiny sizes (both sides start their own local Ray)."""
from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from thinwire.bench import sim

pytestmark = pytest.mark.slow

HAVE_FLWR = importlib.util.find_spec("flwr") is not None


def _args(tmp_path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sim.add_arguments(p)
    args = p.parse_args(["--clients", "12", "--rounds", "2", "--per-round", "3",
                         "--json", str(tmp_path / "bench.json")])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_bench_sim_thinwire_only(tmp_path):
    assert sim.run(_args(tmp_path, skip_flower=True)) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    tw = doc["thinwire"]
    assert doc["flower"] is None and doc["comparison"] == {}
    assert [r["round"] for r in tw["curve"]] == [1, 2]
    _check_thinwire_side(tw, _args(tmp_path), tmp_path / "check")


def _check_thinwire_side(tw, args, out_dir) -> None:
    """What the thinwire side reports, against what the workload implies."""
    cfg = sim.workload(args, str(out_dir))
    _, model = sim.initial_model(cfg)
    numel = sum(p.numel() for p in model.parameters())
    assert (cfg.codec, cfg.per_round, cfg.profile) == ("identity", 3, "uniform")
    # bytes up: identity codec = 4 bytes per parameter per update, 3 updates per round, plus a
    # header of under 1 KiB per update; the summary is the sum of the rounds.
    assert tw["bytes_up"] == sum(r["bytes_up"] for r in tw["curve"])
    for r in tw["curve"]:
        assert 3 * 4 * numel <= r["bytes_up"] <= 3 * (4 * numel + 1024), (r["bytes_up"], numel)
    # simulated time: a round cannot close before one update of 4 * numel bytes crossed an uplink,
    # and the uniform profile's fastest uplink is 1.5 x --bandwidth-mbps.
    assert tw["time_s"] == pytest.approx(tw["curve"][-1]["time"])
    per_round = [b["time"] - a["time"] for a, b in zip([{"time": 0.0}] + tw["curve"], tw["curve"])]
    assert min(per_round) >= 4 * numel * 8 / (1.5 * cfg.bandwidth_mbps * 1e6), per_round
    # the bench's wall clock wraps the engine's (which starts after argument checks)
    assert tw["wall_s"] >= tw["curve"][-1]["wall_time"]


@pytest.mark.skipif(not HAVE_FLWR, reason="flwr not installed (pip install -e '.[bench]')")
def test_bench_sim_side_by_side(tmp_path):
    png = tmp_path / "bench.png"
    assert sim.run(_args(tmp_path, plot=str(png))) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    data, _ = sim.initial_model(sim.workload(_args(tmp_path), str(tmp_path / "check")))
    n_test = len(data.test_data()[1])
    for side in ("thinwire", "flower"):
        curve = doc[side]["curve"]
        assert [r["round"] for r in curve] == [1, 2]
        # accuracy is a count of the same test set on both sides: a multiple of 1 / n_test
        assert all(abs(r["accuracy"] * n_test - round(r["accuracy"] * n_test)) < 1e-6 for r in curve)
        assert doc[side]["wall_s"] >= curve[-1]["wall_time"]
    _check_thinwire_side(doc["thinwire"], _args(tmp_path), tmp_path / "check")
    assert doc["comparison"]["wall_ratio_thinwire_over_flower"] == pytest.approx(
        doc["thinwire"]["wall_s"] / doc["flower"]["wall_s"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_workload_is_the_issue_s(tmp_path):
    cfg = sim.workload(argparse.Namespace(clients=1000, rounds=150, per_round=10, seed=0), str(tmp_path))
    assert (cfg.dataset, cfg.partition, cfg.alpha, cfg.model, cfg.hidden) == ("digits", "dirichlet", 0.5, "mlp", [64, 64])
    assert (cfg.lr, cfg.batch_size, cfg.local_epochs, cfg.momentum) == (0.05, 16, 1, 0.0)
    assert (cfg.server_lr, cfg.server_momentum, cfg.codec, cfg.eval_every) == (1.0, 0.9, "identity", 1)


def test_missing_flwr_is_a_user_error(tmp_path, monkeypatch):
    from thinwire.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("flwr") else real(name, *a))
    with pytest.raises(UserError, match="bench extra"):
        sim.run(_args(tmp_path))
