"""`thinwire bench compression` end to end on a small workload: table, JSON, plots, user errors."""
import argparse
import json
import math

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
    # EDEN b=2 (unbiased) on N(0,1) vectors: the Hadamard rotation of an iid Gaussian vector is iid
    # Gaussian, so vNMSE is the theory value v (= D/(1-D) for the Lloyd-Max MSE D) up to the
    # sampling error of d = 4096 coordinates (delta method, see _eden_vnmse_and_var), and the
    # 4-client NMSE is v/4 up to its own error. 5 standard errors each.
    d, n = 4096, 4
    v, var1 = _eden_vnmse_and_var(2)
    se1 = math.sqrt(var1 / d)
    # mean of n estimates: the own-error terms average (var1 / n^3 / d), plus the cross terms
    # <e_i, e_j> of independent rotations (variance v^2 ||x||^4 / d each, 2 n (n-1) of them / n^4)
    se4 = math.sqrt(var1 / n ** 3 / d + 2 * (n - 1) * v * v / (d * n ** 3))
    assert abs(eden["nmse_1"] - v) <= 5 * se1, (eden["nmse_1"], v, se1)
    assert abs(eden["nmse_4"] - v / n) <= 5 * se4, (eden["nmse_4"], v / n, se4)
    # randblock keeps one block of d/16 coordinates unscaled: error = 1 - (kept energy share); for
    # iid coordinates the share's variance is p (1 - p) Var(z^2) / (d E[z^2]^2) with p = 1/16,
    # Var(z^2) = 2 for N(0,1).
    p = 1 / 16
    se_rb = math.sqrt(p * (1 - p) * 2 / d)
    assert abs(rows["randblock:ratio=16"]["nmse_1"] - (1 - p)) <= 5 * se_rb
    for r in res["codecs"]:
        assert r["send_s"]["10Mbit"] == pytest.approx(8 * r["nbytes"] / 1e7)
    # shared rotation: same NMSE decay as independent ones on independent clients; none on
    # identical-ish clients (the quantization error is shared), where per-client rotations keep 1/n
    rc = {(r["workload"].split()[0], r["rotation"]): r["nmse"] for r in res["rotation_check"]["rows"]}
    v = 0.1331
    assert rc[("independent", "client")] == pytest.approx(v / 4, rel=0.3)
    assert rc[("independent", "shared")] == pytest.approx(v / 4, rel=0.3)
    assert rc[("correlated", "client")] == pytest.approx(v / 4, rel=0.3)
    assert rc[("correlated", "shared")] > 0.6 * v
    sc = res["speed_check"]     # a timing: only its definitions are checked, never a time bar
    assert sc["d"] == 65536 and sc["ratio"] == pytest.approx(sc["eden_b2_encode_decode_s"] / sc["fwht_plus_bucketize_s"])
    assert sorted(sc["bits"]) == ["1", "2", "3", "4"]
    assert all(r["ratio_min"] <= r["ratio"] <= r["ratio_max"] for r in sc["bits"].values())
    assert all((tmp_path / "plots" / f).stat().st_size > 1000
               for f in ("bench-compression-nmse.png", "bench-compression-send-time.png"))


def _eden_vnmse_and_var(bits: int) -> tuple[float, float]:
    """Unbiased EDEN on iid N(0,1) coordinates z with Lloyd-Max levels Q(z): the decoded vector is
    (|z|^2 / <z, Q>) Q, so vNMSE = A B / C^2 - 1 with A = mean z^2, B = mean Q^2, C = mean z Q.
    Returns v = E[z^2] E[Q^2] / E[zQ]^2 - 1 (the theory value) and the per-coordinate variance
    g^T S g of the delta method (g = gradient of A B / C^2, S = covariance of (z^2, Q^2, zQ)),
    from exact normal integrals over the quantizer's cells: Var(vNMSE estimate) ~ g^T S g / d."""
    import numpy as np

    from thinwire.compression.eden import boundaries, centroids

    c = centroids(bits).double().tolist()
    cuts = [-math.inf] + boundaries(bits).double().tolist() + [math.inf]

    def pdf(t):
        return 0.0 if math.isinf(t) else math.exp(-t * t / 2) / math.sqrt(2 * math.pi)

    def cdf(t):
        return 0.5 * (1 + math.erf(t / math.sqrt(2))) if not math.isinf(t) else float(t > 0)

    def tpow(t, k):
        return 0.0 if math.isinf(t) else t ** k
    q2 = q4 = zq = z2q2 = z3q = q3z = 0.0
    for ck, a, b in zip(c, cuts[:-1], cuts[1:]):
        prob = cdf(b) - cdf(a)
        m1 = pdf(a) - pdf(b)                                          # E[z; a < z < b]
        m2 = prob + tpow(a, 1) * pdf(a) - tpow(b, 1) * pdf(b)         # E[z^2; ...]
        m3 = (tpow(a, 2) + 2) * pdf(a) - (tpow(b, 2) + 2) * pdf(b)    # E[z^3; ...]
        q2 += ck ** 2 * prob
        q4 += ck ** 4 * prob
        zq += ck * m1
        z2q2 += ck ** 2 * m2
        z3q += ck * m3
        q3z += ck ** 3 * m1
    mean = np.array([1.0, q2, zq])
    second = np.array([[3.0, z2q2, z3q], [z2q2, q4, q3z], [z3q, q3z, z2q2]])
    cov = second - np.outer(mean, mean)
    g = np.array([q2 / zq ** 2, 1.0 / zq ** 2, -2 * q2 / zq ** 3])
    return q2 / zq ** 2 - 1, float(g @ cov @ g)


def test_eden_theory_helper_matches_the_codec_table():
    from thinwire.compression.eden import theoretical_vnmse

    for b in (1, 2, 3):
        assert _eden_vnmse_and_var(b)[0] == pytest.approx(theoretical_vnmse(b), rel=1e-9)
    assert _eden_vnmse_and_var(1)[0] == pytest.approx(math.pi / 2 - 1, rel=1e-6)   # 1 bit: pi/2 - 1


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
