"""`thinwire bench store` on a small fleet: exact read-backs, bytes on disk, bounded files, refusals."""
import argparse
import json

import pytest

from thinwire.bench import store as bench
from thinwire.errors import ConfigError


def _args(tmp_path, **kw):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args(["--clients", "6", "--dim", "1000", "--rounds", "3", "--per-round", "2", "--no-progress",
                      "--dir", str(tmp_path), "--min-free-gb", "0"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bench_store_small(tmp_path, dtype):
    out = tmp_path / "r.json"
    assert bench.run(_args(tmp_path, dtype=dtype, json=str(out))) == 0
    r = json.loads(out.read_text())
    elem = 4 if dtype == "float32" else 2
    assert r["disk_bytes"] == 6 * 1000 * elem                  # one file per client, nothing else
    assert r["populate"]["bytes"] == 6 * 1000 * elem
    assert r["files_after"] <= 6 + 2 * 2                        # live + the previous snapshot's
    if dtype == "float32":
        assert r["exact_fp32"] is True
    else:
        assert 0 < r["fp16_max_rel_error"] <= 2 ** -11
    assert not list(tmp_path.glob("thinwire-store-*"))          # removed without --keep


def test_bench_store_refuses_what_does_not_fit(tmp_path):
    with pytest.raises(ConfigError, match="clients"):
        bench.run(_args(tmp_path, min_free_gb=1e9))
    with pytest.raises(ConfigError, match="per-round"):
        bench.run(_args(tmp_path, per_round=7))
