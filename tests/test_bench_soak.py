"""Smoke test of `thinwire bench soak` at a tiny size: the served run finishes with every push
accepted, and what it reports is consistent (the figures themselves are in docs/BENCHMARKS.md)."""
from __future__ import annotations

import argparse
import json
import os

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
    # Memory: without a leak the server's RSS after the warm-up can still rise by what the C heap
    # keeps untrimmed and what new server threads touch, never by more. server/malloc_policy.py
    # trims a glibc arena only above M_TRIM_THRESHOLD = 2 x (message_limit(chunk) + 64 KiB), in at
    # most 2 arenas; the soak server runs <= 32 gRPC threads, each touching <= 128 KiB (stack + thread
    # cache) when first used. Over the fitted rounds (warm-up + 1 .. rounds: a span of 4) the slope
    # times the span stays below that slack (measured: ~0.6 MB/round x 4 vs ~8.6 MB).
    from thinwire.config import RunConfig
    from thinwire.wire.format import message_limit

    slack = 2 * 2 * (message_limit(RunConfig().chunk_size) + (64 << 10)) + 32 * (128 << 10)
    span = 6 - 1 - 1
    assert r["rss_slope_kb_per_round"] * 1e3 * span <= slack, (r["rss_slope_kb_per_round"], slack)
    assert (r["rss_last_mb"] - r["rss_first_mb"]) * 1e6 <= slack
    # CPU: read from the kernel in clock ticks, so CPU per round x the rounds it covers (rounds 1..6
    # after a 1-round warm-up, all sampled) is a whole number of ticks; and a process cannot use
    # more CPU seconds than cores x wall seconds.
    assert r["rounds_sampled"] == 6
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    ticks = r["server_cpu_s_per_round"] * 5 / tick
    assert abs(ticks - round(ticks)) < 1e-6 and round(ticks) >= 1, ticks
    assert r["server_cpu_s_per_round"] <= r["round_wall_s"] * os.cpu_count()
    assert r["server_cpu_s_per_round"] == pytest.approx(r["server_cpu_s_per_wall_s"] * r["round_wall_s"], rel=1e-9)
    assert "slope" in capsys.readouterr().out


def test_bench_soak_bad_sizes_are_one_line_errors():
    from thinwire.errors import ConfigError

    p = argparse.ArgumentParser()
    soak.add_arguments(p)
    with pytest.raises(ConfigError, match="per_round"):
        soak.run(p.parse_args(["--clients", "5", "--per-round", "6"]))
    with pytest.raises(ConfigError, match="processes"):
        soak.run(p.parse_args(["--clients", "5", "--per-round", "2", "--processes", "0"]))
