"""--tensorboard: the same scalars as metrics.jsonl, in TensorBoard event files beside it."""
import pytest

from thinwire import metrics
from thinwire.config import RunConfig, build
from thinwire.errors import ConfigError
from thinwire.metrics import MetricsWriter, read_metrics


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def rows(n, start=0):
    return [{"round": r, "accuracy": 0.1 * r, "bytes_up": 1000 * r, "stragglers": [1, 2][: r % 3], "note": "x"}
            for r in range(start, n)]


def test_event_files_hold_the_jsonl_scalars_and_resume_purges_later_rounds(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=True)
    for row in rows(5):
        w.write(row)
    w.close()
    got = scalars(tmp_path / "tensorboard")
    assert set(got) == {"accuracy", "bytes_up", "stragglers_count"}
    jsonl = read_metrics(tmp_path)
    assert [s for s, _ in got["accuracy"]] == [r["round"] for r in jsonl]
    assert [v for _, v in got["accuracy"]] == pytest.approx([r["accuracy"] for r in jsonl])
    assert [v for _, v in got["stragglers_count"]] == [0, 1, 2, 0, 1]
    # crash after round 2's checkpoint: rounds 3.. are redone, each round appears once
    w = MetricsWriter(tmp_path, resume_after=2, tensorboard=True)
    for row in rows(5, start=3):
        w.write({**row, "accuracy": 0.9})
    w.close()
    got = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in got["accuracy"]] == [0, 1, 2, 3, 4]
    assert [v for _, v in got["accuracy"]][3:] == pytest.approx([0.9, 0.9])


def test_without_the_package_the_flag_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        build(RunConfig, {"tensorboard": True})
    assert e.value.field == "tensorboard" and "pip install" in str(e.value)
    assert not build(RunConfig, {}).tensorboard  # off by default: no dependency
