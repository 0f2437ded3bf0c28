"""Smoke test of `thinwire bench soak` at a tiny size: the served run finishes with every push
accepted, and what it reports is consistent (the figures themselves are in docs/BENCHMARKS.md)."""
from __future__ import annotations

import argparse
import json

import pytest

from thinwire.bench import soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_bench_soak_runs_and_reports(tmp_path, capsys):
    p = argparse.ArgumentParser()
    soak.add_arguments(p)
    out = tmp_path / "soak.json"
    assert soak.run(p.parse_args(["--clients", "12", "--rounds", "6", "--per-round", "3", "--processes", "2",
                                  "--warmup", "1", "--heartbeat", "0.5", "--json", str(out)])) == 0
    r = json.loads(out.read_text())
    assert r["processes"] == 2 and r["rounds_sampled"] >= 2
    assert r["pushes"] == 6 * 3                                   # every trained update pushed once, none retried
    for line in r["fleets"]:
        n = int(line.split()[0])
        assert f"{n} pushes = {n} updates accepted + 0 already received + 0 late" in line
    assert 0 < r["push_p50_s"] <= r["push_p99_s"]
    assert r["rss_last_mb"] > 50 and r["server_cpu_s_per_round"] >= 0
    assert "slope" in capsys.readouterr().out


def test_bench_soak_bad_sizes_are_one_line_errors():
    from thinwire.errors import ConfigError

    p = argparse.ArgumentParser()
    soak.add_arguments(p)
    with pytest.raises(ConfigError, match="per_round"):
        soak.run(p.parse_args(["--clients", "5", "--per-round", "6"]))
    with pytest.raises(ConfigError, match="processes"):
        soak.run(p.parse_args(["--clients", "5", "--per-round", "2", "--processes", "0"]))
