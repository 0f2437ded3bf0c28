"""Config validation: every bad input is one line naming the field and what is allowed; CLI exit 2."""
import subprocess
import sys

import pytest

from thinwire.config import RunConfig, load
from thinwire.errors import ConfigError

BAD = [
    ({"clients": "0"}, "clients"),
    ({"clients": "-5"}, "clients"),
    ({"per_round": "0"}, "per_round"),
    ({"clients": "10", "per_round": "11"}, "per_round"),
    ({"straggler_prob": "1.5"}, "straggler_prob"),
    ({"loss_prob": "-0.1"}, "loss_prob"),
    ({"codec": "zip"}, "codec"),
    ({"codec": "fp16:bits=3"}, "codec"),
    ({"profile": "satellite"}, "profile"),
    ({"dataset": "imagenet"}, "dataset"),
    ({"model": "resnet"}, "model"),
    ({"profile": "trace", "trace": "/nonexistent.csv"}, "trace"),
    ({"overcommit": "0.5"}, "overcommit"),
    ({"hidden": "a,b"}, "hidden"),
    ({"rounds": "many"}, "rounds"),
]


@pytest.mark.parametrize("values,field", BAD)
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, values)
    assert e.value.field == field
    assert "\n" not in str(e.value)


def test_unknown_setting_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: .*per_round"):
        load(RunConfig, None, {"per_rund": 3})


def test_file_then_flags_override(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('clients = 20\nper_round = 5\n[faults]\nloss = "iid"\nloss_prob = 0.2\n')
    cfg = load(RunConfig, str(f), {"per_round": "7"})
    assert (cfg.clients, cfg.per_round, cfg.loss, cfg.loss_prob) == (20, 7, "iid", 0.2)
    y = tmp_path / "c.yaml"
    y.write_text("clients: 30\nhidden: [16, 8]\n")
    cfg = load(RunConfig, str(y))
    assert cfg.clients == 30 and cfg.hidden == [16, 8]
    bad = tmp_path / "bad.toml"
    bad.write_text("clients = = 3")
    with pytest.raises(ConfigError, match="config: cannot parse"):
        load(RunConfig, str(bad))


@pytest.mark.parametrize("args,field", [
    (["--clients", "0"], "clients"),
    (["--clients", "10", "--per-round", "20"], "per_round"),
    (["--straggler-prob", "2"], "straggler_prob"),
    (["--codec", "nope"], "codec"),
    (["--profile", "trace", "--trace", "/no/such.csv"], "trace"),
    (["--config", "/no/such.toml"], "config"),
])
def test_cli_exit_2_one_line_no_traceback(args, field):
    p = subprocess.run([sys.executable, "-m", "thinwire.cli", "simulate", *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert f"error: {field}:" in lines[0]


def test_resolved_config_is_valid_toml_that_loads_back(tmp_path):
    from thinwire.config import load, write_resolved_config

    cfg = RunConfig(name='a "quoted" name', out_dir=str(tmp_path), hidden=[32, 16], codec="eden:bits=2",
                    data_path='C:\\data "x"').validate()
    path = write_resolved_config(tmp_path, cfg)
    assert load(RunConfig, str(path)) == cfg
