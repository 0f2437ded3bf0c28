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
    assert tw["wall_s"] > 0 and tw["bytes_up"] > 0 and tw["time_s"] > 0


@pytest.mark.skipif(not HAVE_FLWR, reason="flwr not installed (pip install -e '.[bench]')")
def test_bench_sim_side_by_side(tmp_path):
    png = tmp_path / "bench.png"
    assert sim.run(_args(tmp_path, plot=str(png))) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    for side in ("thinwire", "flower"):
        curve = doc[side]["curve"]
        assert [r["round"] for r in curve] == [1, 2]
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in curve)
        assert doc[side]["wall_s"] > 0
    assert doc["comparison"]["wall_ratio_thinwire_over_flower"] > 0
    assert png.stat().st_size > 0


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
