"""`thinwire plot`: one run or several overlaid; unreadable metrics give one line, no traceback."""
import pytest

from thinwire import cli
from thinwire import plots
from thinwire.metrics import MetricsWriter


def fake_run(path, accs, bytes_per_round):
    w = MetricsWriter(path)
    for r, a in enumerate(accs):
        w.write({"round": r, "accuracy": a, "time": 10.0 * (r + 1), "cum_bytes_up": bytes_per_round * (r + 1)})
    return path


def test_several_runs_are_overlaid_one_line_each(tmp_path, capsys):
    a = fake_run(tmp_path / "runs" / "eden", [0.2, 0.5, 0.7], 1e6)
    b = fake_run(tmp_path / "runs" / "identity", [0.3, 0.6, 0.8, 0.85], 8e6)
    labels = plots.run_labels([a, b])
    assert labels == ["eden", "identity"]
    fig = plots.figure("cum_bytes_up", labels, [plots.curves_of(a), plots.curves_of(b)])
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["eden", "identity"]
    assert list(lines[1].get_xdata()) == [8.0, 16.0, 24.0, 32.0]  # MB
    assert list(lines[0].get_ydata()) == [0.2, 0.5, 0.7]
    assert cli.main(["plot", str(a), str(b)]) == 0
    out = capsys.readouterr().out.split()
    assert sorted(out) == sorted(str(tmp_path / "runs" / f"compare_{n}") for n in
                                 ("accuracy_vs_round.png", "accuracy_vs_time.png", "accuracy_vs_bytes.png"))


def test_same_named_runs_get_distinct_labels(tmp_path):
    a = fake_run(tmp_path / "x" / "run", [0.1], 1)
    b = fake_run(tmp_path / "y" / "run", [0.2], 1)
    assert plots.run_labels([a, b]) == ["x/run", "y/run"]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\n", b'{"round": 0, "accuracy": 0.5}\n{not json\n'])
def test_unreadable_metrics_is_a_one_line_error(tmp_path, capsys, content):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "metrics.jsonl").write_bytes(content)
    assert cli.main(["plot", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics" in err and "Traceback" not in err
