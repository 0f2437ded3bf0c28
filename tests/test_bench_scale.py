"""`thinwire bench scale`: the RSS sampler sees child processes, and a tiny simulate run reports
consistent figures (wall / floor is the ratio it prints, the scheduled floor is at most
the serial one, identity-codec bytes are the model size times the clients)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest

from thinwire.bench import scale
from thinwire.errors import ConfigError


def test_rss_sampler_counts_a_child_as_a_worker():
    code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, "tw-rss-probe"])
    try:
        with scale.RssSampler(None, ("tw-rss-probe",), period=0.05) as s:
            deadline = time.monotonic() + 20
            while s.peak["worker_max"] < 300 * 2**20 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert s.peak["worker_max"] >= 300 * 2**20
        assert s.peak["server"] > 0 and s.peak["tree"] >= s.peak["server"] + s.peak["workers_sum"]
    finally:
        child.kill()
        child.wait()


def _args(**kw):
    p = argparse.ArgumentParser()
    scale.add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_bad_selections_are_one_line_errors():
    for kw, field in (({"engines": "simulate,warp"}, "engines"), ({"models": "resnet9000"}, "models"),
                      ({"rounds": 2}, "rounds"), ({"per_round": 500}, "per_round")):
        with pytest.raises(ConfigError, match=f"^{field}:"):
            scale._check(_args(**kw))


@pytest.mark.slow
def test_a_tiny_scale_run_reports_consistent_figures(tmp_path, capsys):
    out = tmp_path / "scale.json"
    args = _args(engines="simulate", models="mlp", clients=8, per_round=2, rounds=3, steps=3,
                 workers=2, json=str(out))
    assert scale.run(args) == 0
    res = {r["engine"]: r for r in json.loads(out.read_text())["results"]}
    assert set(res) == {"simulate"} and not any("error" in r for r in res.values())
    d = 40 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10    # the MLP 64-64 on 40-sample signals
    for r in res.values():
        assert r["params"] == d
        assert r["ratio"] == pytest.approx(r["wall_per_round_s"] / r["floor_per_round_s"])
        assert r["floor_per_round_s"] <= r["serial_per_round_s"] + 1e-9
        assert r["rss"]["server"] > 0 and r["rss"]["worker_max"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
    sim = res["simulate"]
    # identity codec: 2 clients x (4 bytes x d + a small header) each way
    assert 2 * 2 * 4 * d <= sim["bytes_per_round"] <= 1.01 * 2 * 2 * 4 * d
    assert sim["workers_per_round_s"] <= sim["wall_per_round_s"]
    assert sim["cpu_ratio"] == pytest.approx((sim["workers_cpu_per_round_s"] + sim["driver_cpu_per_round_s"])
                                             / sim["serial_cpu_per_round_s"])
