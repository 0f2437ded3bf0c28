"""`thinwire bench ntk` bookkeeping: rounds/bytes to target, seed combination, goal verdicts (no runs)."""
from __future__ import annotations

from thinwire.bench import ntk as bench


def _curve(accs, per_round):
    return [{"round": i + 1, "accuracy": a, "cum_bytes_up": per_round * (i + 1)} for i, a in enumerate(accs)]


def test_rounds_to_target_combine_and_goals():
    fed = {0: bench.summarize(_curve([0.1] * 49 + [0.9] * 6, 10), 0.9),
           1: bench.summarize(_curve([0.1] * 59 + [0.95] * 6, 10), 0.9)}
    ntk = {0: bench.summarize(_curve([0.1] * 9 + [0.92] * 6, 1000), 0.9),
           1: bench.summarize(_curve([0.1] * 10 + [0.91] * 6, 1000), 0.9)}
    cp = {0: bench.summarize(_curve([0.1] * 12 + [0.905] * 5, 90), 0.9),
          1: bench.summarize(_curve([0.1] * 12 + [0.90] * 5, 90), 0.9)}
    assert fed[0]["rounds_to_target"] == 50 and fed[0]["bytes_to_target"] == 500
    s = {"fedavg": bench.combine(fed), "ntk": bench.combine(ntk), "cp-ntk": bench.combine(cp)}
    assert s["fedavg"]["mean_rounds"] == 55 and s["ntk"]["mean_rounds"] == 10.5
    lines = bench.goals(s)
    assert "5.24x fewer rounds -> MET" in lines[0]                     # 55 / 10.5 >= 5
    assert "gap +1.2 points" in lines[1] and "11.1x fewer" in lines[1] and lines[1].endswith("MET")
    # one seed never reaches the target: the mean is undefined and the verdict says so
    ntk[1] = bench.summarize(_curve([0.1] * 16, 1000), 0.9)
    s["ntk"] = bench.combine(ntk)
    assert s["ntk"]["rounds_to_target"] == [10, None] and s["ntk"]["mean_rounds"] is None
    assert "not decidable" in bench.goals(s)[0]
    # 5x is the bar: 4.9x misses
    s["ntk"] = bench.combine({0: bench.summarize(_curve([0.1] * 10 + [0.95] * 6, 1000), 0.9),
                              1: bench.summarize(_curve([0.1] * 10 + [0.95] * 6, 1000), 0.9)})
    s["fedavg"] = bench.combine({0: bench.summarize(_curve([0.1] * 52 + [0.95] * 6, 10), 0.9)})
    assert "4.82x" in bench.goals(s)[0] and bench.goals(s)[0].endswith("MISSED")


def _args(**over):
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in over.items()])


def test_workload_flags_reach_every_method_and_bad_values_are_refused(tmp_path):
    import pytest
    from thinwire.errors import ConfigError

    cfgs = bench.configs(_args(dataset="mnist1d", model="mlp", hidden="128,32"), str(tmp_path), 0)
    assert set(cfgs) == set(bench.METHODS)
    assert {(c.dataset, c.model, tuple(c.hidden)) for c in cfgs.values()} == {("mnist1d", "mlp", (128, 32))}
    default = bench.configs(_args(), str(tmp_path), 0)["ntk"]          # the digits figures' workload stays the default
    assert (default.dataset, default.model, default.hidden) == ("digits", "mlp", [64, 64])
    for bad, field in (({"dataset": "imagenet"}, "dataset"), ({"model": "vgg99"}, "model"),
                       ({"hidden": "64,x"}, "hidden"), ({"hidden": "0"}, "hidden")):
        with pytest.raises(ConfigError) as e:
            bench.configs(_args(**bad), str(tmp_path), 0)
        assert e.value.field == field
