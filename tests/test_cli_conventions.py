"""CLI conventions: --version, -v anywhere, --help lists every choice flag's allowed values."""
import os
import subprocess
import sys

import pytest

import thinwire
from thinwire import cli
from thinwire import compression
from thinwire.config import DATASETS, FEEDBACK, LOSS_MODELS, LOSS_POLICIES, PARTITIONS, PROFILES, STRAGGLER_MODELS, \
    strategies


def test_version_is_printed_without_importing_the_engines():
    p = subprocess.run([sys.executable, "-c", "import sys; from thinwire.cli import main\n"
                        "try: main(['--version'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["thinwire", thinwire.__version__, "False"]


@pytest.mark.parametrize("argv, level", [(["-v", "plot"], 1), (["plot", "-vv"], 2), (["-v", "plot", "-v"], 2)])
def test_verbose_is_accepted_before_and_after_the_subcommand(tmp_path, monkeypatch, argv, level):
    monkeypatch.delenv("THINWIRE_VERBOSE", raising=False)
    assert cli.main([*argv, str(tmp_path / "missing")]) == 2  # a one-line error, after logging was set up
    assert os.environ["THINWIRE_VERBOSE"] == str(level)


def test_help_lists_the_allowed_values_of_every_choice_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for flag, values in [("--dataset", DATASETS), ("--partition", PARTITIONS), ("--profile", PROFILES),
                         ("--stragglers", STRAGGLER_MODELS), ("--loss", LOSS_MODELS),
                         ("--loss-policy", LOSS_POLICIES), ("--strategy", strategies()), ("--feedback", FEEDBACK),
                         ("--codec", tuple(compression.available()))]:
        help_ = text.split(f" {flag} {flag[2:].upper().replace('-', '_')} ", 1)[1]
        assert "one of: " + ", ".join(values) in help_.split(" --", 1)[0], flag


def test_bench_help_lists_every_benchmark_with_its_text(capsys):
    from thinwire.bench import BENCHES

    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, (_, helptext) in BENCHES.items():
        # argparse %-formats help strings: a bare "%" in one used to print the action's dict
        assert f"{name} {helptext}" in text, name


def test_results_table_says_what_its_time_is():
    from thinwire.server.rounds import results_table

    s = {"time_s": 75.8, "wall_time_s": 10.6}
    assert "75.8 s (simulated)" in results_table(s)
    assert "75.8 s (wall clock)" in results_table(s, clock="wall")
    assert "75.8 s (wall clock / time-scale 0.1)" in results_table(s, clock="wall", time_scale=0.1)
