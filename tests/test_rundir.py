"""Run directories: unnamed runs never collide, named runs are never silently overwritten."""
import datetime as dt
import os
import subprocess
import sys

import pytest

from thinwire.errors import ConfigError
from thinwire.rundir import resolve_run_dir

NOW = dt.datetime(2025, 1, 2, 3, 4, 5)


def test_unnamed_runs_get_distinct_directories_even_in_the_same_second(tmp_path):
    dirs = [resolve_run_dir(tmp_path, "", command="simulate", now=NOW) for _ in range(3)]
    assert [d.name for d in dirs] == ["simulate-20250102-030405", "simulate-20250102-030405-2",
                                      "simulate-20250102-030405-3"]
    assert all(d.is_dir() for d in dirs)
    assert (tmp_path / "latest").resolve() == dirs[-1].resolve()
    assert os.readlink(tmp_path / "latest") == dirs[-1].name  # relative: survives moving OUT_DIR


def test_named_run_is_refused_once_it_holds_a_run(tmp_path):
    d = resolve_run_dir(tmp_path, "exp")
    assert d == tmp_path / "exp"
    assert resolve_run_dir(tmp_path, "exp") == d  # created but still empty: usable
    (d / "metrics.jsonl").write_text('{"round": 0}\n')
    with pytest.raises(ConfigError) as e:
        resolve_run_dir(tmp_path, "exp")
    assert e.value.field == "name" and "--resume" in str(e.value) and "--force" in str(e.value)
    assert (d / "metrics.jsonl").read_text() == '{"round": 0}\n'  # untouched


def test_resume_keeps_and_force_clears_the_run(tmp_path):
    d = resolve_run_dir(tmp_path, "exp")
    (d / "checkpoint.pt").write_bytes(b"x")
    (d / "plots").mkdir()
    assert resolve_run_dir(tmp_path, "exp", resume=True) == d
    assert (d / "checkpoint.pt").exists()
    assert resolve_run_dir(tmp_path, "exp", force=True) == d
    assert list(d.iterdir()) == []
    with pytest.raises(ConfigError):
        resolve_run_dir(tmp_path, "exp", resume=True, force=True)


def test_force_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "precious.py").write_text("x = 1\n")
    with pytest.raises(ConfigError) as e:
        resolve_run_dir(tmp_path, "src", force=True)
    assert "not a thinwire run" in str(e.value)
    assert (tmp_path / "src" / "precious.py").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "latest"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError):
        resolve_run_dir(tmp_path, name)


def test_resume_needs_a_name(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_run_dir(tmp_path, "", resume=True)
    assert e.value.field == "name"


def test_cli_refuses_to_overwrite_a_named_run_in_one_line(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "metrics.jsonl").write_text("")
    p = subprocess.run([sys.executable, "-m", "thinwire.cli", "simulate", "--name", "demo", "--out-dir",
                        str(tmp_path), "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "already holds a run" in p.stderr
