"""Smoke test of `thinwire bench wire` at tiny sizes: both servers start, every push is accepted,
and the accounting it reports is consistent (the figures themselves are in docs/BENCHMARKS.md)."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from thinwire.bench import wire

pytestmark = pytest.mark.slow


def test_bench_wire_runs_and_accounts_bytes(tmp_path, capsys):
    p = argparse.ArgumentParser()
    wire.add_arguments(p)
    out = tmp_path / "wire.json"
    args = p.parse_args(["--clients", "3", "--sizes-mb", "0.2", "--chunk-kb", "64", "--rounds", "2",
                         "--json", str(out)])
    assert wire.run(args) == 0
    (r,) = json.loads(out.read_text())
    assert r["clients"] == 3 and r["rounds"] == 2
    # The rates are total update bytes / push time of each side, so their quotient is the time
    # ratio it reports; the update is 0.2 MB of float32 (50,000 values) plus a header < 1 KiB.
    assert r["ratio"] == pytest.approx(r["ingest_mb_s"] / r["raw_mb_s"], rel=1e-9)
    assert 4 * 50_000 <= r["payload_bytes"] <= 4 * 50_000 + 1024
    # Server memory while ingesting stays within the bench's goal: 2 x model (fp32) + 100 MB
    # (the fold buffer and one update in flight, plus fixed overhead).
    assert r["rss_goal_mb"] == pytest.approx((2 * 4 * 50_000 + 100 * 1_000_000) / 1_000_000)
    assert r["rss_growth_mb"] <= r["rss_goal_mb"], (r["rss_growth_mb"], r["rss_goal_mb"])
    # gRPC-level bytes: the payload plus per-message framing (a few dozen bytes per 64 KiB chunk)
    assert 1.0 < r["grpc_per_payload"] < 1.01
    # the kernel saw at least what gRPC serialized, plus HTTP/2 frame headers and control RPCs
    assert r["grpc_per_payload"] <= r["socket_per_payload"] < 1.05
    # CPU time is read in scheduler ticks (10 ms): this 1.2 MB smoke run may round to 0 on the server,
    # but it is a whole number of ticks (a kernel reading, not an estimate).
    ticks = r["server_cpu_s"] * os.sysconf("SC_CLK_TCK")
    assert abs(ticks - round(ticks)) < 1e-6 and r["server_cpu_s"] < 60 and r["p50_s"] <= r["p99_s"]
    printed = capsys.readouterr().out
    assert "vs raw x" in printed and "ingest MB/s" in printed and printed.rstrip().endswith(wire.WIRE_LEGEND.splitlines()[-1])


def test_bench_wire_bad_lists_are_one_line_errors():
    from thinwire.errors import ConfigError

    p = argparse.ArgumentParser()
    wire.add_arguments(p)
    with pytest.raises(ConfigError, match="clients"):
        wire.run(p.parse_args(["--clients", "0"]))
    with pytest.raises(ConfigError, match="rounds"):
        wire.run(p.parse_args(["--rounds", "0"]))
