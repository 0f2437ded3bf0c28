"""`thinwire bench compression` end to end on a small workload: table, JSON, plots, user errors."""
import argparse
import json

import numpy as np
import pytest

from thinwire.bench import compression as bench
from thinwire.errors import ConfigError, DataError


def _args(**kw):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args(["--dim", "4096", "--clients", "4", "--repeat", "1", "--speed-dim", "65536", "--rotation-dim", "16384",
                          "--no-progress"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_bench_small_run_writes_consistent_json_and_plots(tmp_path, capsys):
    out = tmp_path / "r.json"
    codecs = ["eden:bits=2", "randblock:ratio=16", "identity", "qsgd:levels=4,coding=elias"]
    assert bench.run(_args(codecs=codecs, json=str(out), plots=str(tmp_path / "plots"))) == 0
    text = capsys.readouterr().out
    assert "eden:bits=2" in text and "speed check" in text
    res = json.loads(out.read_text())
    rows = {r["codec"]: r for r in res["codecs"]}
    ident, eden = rows["identity"], rows["eden:bits=2"]
    assert ident["nmse_1"] == 0 and ident["ratio_vs_fp32"] == pytest.approx(1, rel=0.05)
    assert eden["bits_per_coord"] == pytest.approx(2, abs=0.5)  # header is a few hundred bytes at d=4096
    assert eden["nmse_1"] == pytest.approx(0.133, rel=0.15)
    assert eden["nmse_4"] == pytest.approx(0.133 / 4, rel=0.3)
    assert rows["randblock:ratio=16"]["nmse_1"] == pytest.approx(1 - 1 / 16, rel=0.15)
    for r in res["codecs"]:
        assert r["send_s"]["10Mbit"] == pytest.approx(8 * r["nbytes"] / 1e7)
    assert res["speed_check"]["ratio"] > 0
    # encode + decode contain two FWHTs of the padded vector: at least one FWHT's time, whatever the noise
    # shared rotation: same NMSE decay as independent ones on independent clients; none on
    # identical-ish clients (the quantization error is shared), where per-client rotations keep 1/n
    rc = {(r["workload"].split()[0], r["rotation"]): r["nmse"] for r in res["rotation_check"]["rows"]}
    v = 0.1331
    assert rc[("independent", "client")] == pytest.approx(v / 4, rel=0.3)
    assert rc[("independent", "shared")] == pytest.approx(v / 4, rel=0.3)
    assert rc[("correlated", "client")] == pytest.approx(v / 4, rel=0.3)
    assert rc[("correlated", "shared")] > 0.6 * v
    sc = res["speed_check"]["bits"]
    assert sorted(sc) == ["1", "2", "3", "4"] and all(r["ratio"] >= 1 for r in sc.values())
    assert all((tmp_path / "plots" / f).stat().st_size > 1000
               for f in ("bench-compression-nmse.png", "bench-compression-send-time.png"))


def test_bench_reads_npy_rows_as_clients(tmp_path):
    arr = np.random.default_rng(0).standard_normal((3, 2048)).astype(np.float32)
    f = tmp_path / "g.npy"
    np.save(f, arr)
    out = tmp_path / "r.json"
    assert bench.run(_args(file=str(f), codecs=["fp16"], json=str(out), no_speed_check=True)) == 0
    assert json.loads(out.read_text())["codecs"][0]["d"] == 2048


@pytest.mark.parametrize("kw,err", [
    (dict(dist="cauchy"), "dist"), (dict(source="mnist"), "source"), (dict(codecs=["eden:bits=9"]), "codecs"),
    (dict(clients=0), "clients"), (dict(device="tpu"), "device"),
])
def test_bench_user_errors_are_one_line(kw, err):
    with pytest.raises(ConfigError, match=err):
        bench.run(_args(**kw))


def test_bench_missing_file(tmp_path):
    with pytest.raises(DataError, match="file"):
        bench.run(_args(file=str(tmp_path / "nope.npy")))
