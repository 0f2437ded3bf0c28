"""`thinwire bench stragglers`: every method x profile is a valid run on one fleet, M-SGC only at
full participation, and time / bytes to target are read at the first crossing."""
import argparse

import pytest

from thinwire.bench import stragglers
from thinwire.errors import ConfigError


def _args(**kw):
    p = argparse.ArgumentParser()
    stragglers.add_arguments(p)
    a = p.parse_args([])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_every_method_and_profile_is_a_valid_run_on_the_same_fleet(tmp_path):
    a = _args()
    for profile in stragglers.PROFILES:
        cfgs = {m: stragglers.config_for(a, m, profile, 3, tmp_path) for m in stragglers.METHODS}
        assert cfgs["m-sgc"] is None                      # 10 of 100 per round: not its setting
        runs = [c for c in cfgs.values() if c is not None]
        for c in runs:
            c.validate()
        fleet = {(c.clients, c.seed, c.profile, c.stragglers, c.straggler_prob, c.codec, c.partition, c.trace)
                 for c in runs}
        assert len(fleet) == 1
        assert cfgs["fedbuff"].buffer_size == cfgs["sync-all"].per_round == 10 and cfgs["fedbuff"].concurrency == 20
    full = _args(clients=12, per_round=12, buffer_size=4, concurrency=12)
    c = stragglers.config_for(full, "m-sgc", "gilbert", 0, tmp_path)
    assert c is not None and c.strategy == "m-sgc"
    c.validate()


def test_time_and_bytes_to_target_are_the_first_crossing():
    curve = [{"round": i, "time": 2.0 * i, "accuracy": acc, "bytes": 100 * i}
             for i, acc in enumerate([0.1, 0.5, 0.91, 0.85, 0.95])]
    hit = stragglers.to_target(curve, 0.9)
    assert (hit["time"], hit["bytes"], hit["steps"]) == (4.0, 200, 3)
    assert stragglers.to_target(curve, 0.99)["time"] is None and stragglers.to_target(curve, 0.99)["final"] == 0.95


def test_bad_lists_name_the_field():
    with pytest.raises(ConfigError, match="profiles"):
        stragglers._list("profiles", "mobile,nope", stragglers.PROFILES)
    with pytest.raises(ConfigError, match="seeds"):
        stragglers._seeds("0,x")
