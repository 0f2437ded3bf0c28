"""Broken checkpoint files (issue 24): truncated, bytes flipped, another engine's, another run's.

thinwire.checkpoint.load refuses each with a one-line CheckpointError (field "resume") naming the
file; `thinwire simulate --resume` and `thinwire server --resume` exit 2 with that line and leave
the run directory exactly as it was; a good checkpoint then still resumes."""
from __future__ import annotations

import os

import pytest
import torch

from thinwire import checkpoint
from thinwire.checkpoint import CHECKPOINT, CheckpointError
from thinwire.errors import ConfigError
from thinwire.rundir import DiskFull, appending


def _state(n: int = 4096) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"round": 3, "global": torch.randn(n, generator=g), "strategy": {"lr": 0.1, "m": torch.arange(7)},
            "clients": {"store": {1: {"memory": {"delta": {"residual": torch.randn(50, generator=g)}}}}},
            "history": [{"round": 3, "accepted": [0, 2]}], "config": {"seed": 1, "codec": "identity"},
            "totals": {"time": 1.5, "bytes_up": 10}}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# -- load: the file itself ------------------------------------------------------------------------
def test_save_load_round_trip_and_the_file_stays_a_plain_torch_file(tmp_path):
    st = _state()
    path = checkpoint.save(tmp_path, st, kind="simulate")
    assert path == tmp_path / CHECKPOINT and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
    assert _equal(checkpoint.load(tmp_path, kind="simulate", required=("round", "global")), st)
    raw = torch.load(path, weights_only=True)              # users may still inspect it with torch
    assert raw[checkpoint.META]["kind"] == "simulate" and torch.equal(raw["global"], st["global"])
    assert checkpoint.load(tmp_path / "nowhere") is None


@pytest.mark.parametrize("keep", ["0", "1", "100", "half", "-22", "-1"])
def test_truncated_file_is_refused_naming_it(tmp_path, keep):
    path = checkpoint.save(tmp_path, _state())
    data = path.read_bytes()
    n = {"half": len(data) // 2}.get(keep) or (len(data) + int(keep) if keep.startswith("-") else int(keep))
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(tmp_path)
    assert isinstance(e.value, ConfigError) and e.value.field == "resume" and e.value.path == path
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"resume: checkpoint {str(path)!r} ")
    assert "truncated" in msg


def test_flipped_bytes_never_load_as_different_contents(tmp_path):
    """Every single-byte flip either is refused or (zip padding, unused bytes) loads the very same
    contents; a flip inside tensor data, which torch itself does not notice, is refused by the SHA-256."""
    st = _state()
    path = checkpoint.save(tmp_path, st)
    data = path.read_bytes()
    at = data.find(st["global"].numpy().tobytes()[:64])
    assert at > 0
    refused = 0
    positions = sorted(set(range(0, len(data), max(1, len(data) // 150))) | {at + 1000, at + 4 * 4095})
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            got = checkpoint.load(tmp_path)
        except CheckpointError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            refused += 1
            continue
        assert _equal(got, st), f"flip at byte {pos} of {len(data)} loaded different contents"
    # the 16 KiB of `global` are most of the file: most flips land in it and are caught
    assert refused >= 0.5 * len(positions)
    for pos in (at + 1000, at + 4 * 4095):                  # inside the tensor: torch loads it, we do not
        bad = bytearray(data)
        bad[pos] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="corrupt.*SHA-256"):
            checkpoint.load(tmp_path)


def test_another_engines_or_foreign_file_is_refused(tmp_path):
    checkpoint.save(tmp_path, {"epoch": 2, "model": torch.zeros(3)}, kind="allreduce")
    with pytest.raises(CheckpointError, match=r"written by `thinwire allreduce`, not `thinwire simulate`"):
        checkpoint.load(tmp_path, kind="simulate", required=("round", "global"))
    # unlabelled (saved without a kind): the required keys decide
    checkpoint.save(tmp_path, {"epoch": 2, "model": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"is not a `thinwire simulate` checkpoint \(it lacks round, global\)"):
        checkpoint.load(tmp_path, kind="simulate", required=("round", "global"))
    # a plain torch file somebody put there: a model's state_dict, a bare tensor
    torch.save({"fc.weight": torch.zeros(2, 2), "round": 1}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"is not a thinwire checkpoint, or its header is damaged"):
        checkpoint.load(tmp_path, kind="simulate", required=("round",))
    torch.save(torch.zeros(3), tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"is not a thinwire checkpoint \(it holds a Tensor"):
        checkpoint.load(tmp_path)
    import numpy as np
    torch.save({"round": 1, "global": np.zeros(3)}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"is not a thinwire checkpoint \(it holds Python objects"):
        checkpoint.load(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint at all, just text\n" * 3)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path)


def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    checkpoint.save(tmp_path, _state())
    (tmp_path / ".ckpt-abandoned").write_bytes(b"half a checkpoint")   # kill -9 between write and rename
    assert checkpoint.load(tmp_path)["round"] == 3
    checkpoint.save(tmp_path, {**_state(), "round": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    assert checkpoint.load(tmp_path)["round"] == 4


# -- the commands: simulate --resume and server --resume ------------------------------------------
def _snapshot(root):
    """Every file under `root` with its bytes and mtime: a refused resume must change none of them."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _broken(good: bytes, case: str, tmp_path) -> bytes:
    """The bytes of checkpoint.pt for one case, from a good one of the run."""
    if case == "truncated":
        return good[: len(good) * 2 // 3]
    if case == "flipped":
        bad = bytearray(good)
        for pos in range(len(good) // 3, len(good) * 2 // 3, 997):   # a few bytes in the middle (the model)
            bad[pos] ^= 0xFF
        return bytes(bad)
    d = tmp_path / f"craft-{case}"
    d.mkdir()
    (d / CHECKPOINT).write_bytes(good)
    state = checkpoint.load(d)
    if case == "other-settings":                 # a checkpoint of another run: same engine, another lr
        checkpoint.save(d, {**state, "config": {**state["config"], "lr": 0.3}}, kind="simulate")
    elif case == "other-engine":                 # what `thinwire allreduce` would write
        checkpoint.save(d, {"epoch": 1, "model": state["global"], "config": state["config"]}, kind="allreduce")
    return (d / CHECKPOINT).read_bytes()


EXPECTED = {"truncated": "truncated or corrupt", "flipped": "is corrupt (its contents do not match their SHA-256",
            "other-settings": "was written by a run with other settings (lr: 0.3 -> 0.05)",
            "other-engine": "was written by `thinwire allreduce`, not `thinwire simulate`"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_from_a_broken_checkpoint_exits_2_and_leaves_the_run_alone(tmp_path, capsys):
    import ray

    from thinwire import cli

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "runs"
        common = ["--clients", "4", "--per-round", "4", "--workers", "1", "--seed", "2", "--out-dir", str(out),
                  "--name", "r", "--no-progress"]
        assert cli.main(["simulate", *common, "--rounds", "2", "--no-plots"]) == 0
        run = out / "r"
        good = (run / CHECKPOINT).read_bytes()
        capsys.readouterr()
        for case, expected in EXPECTED.items():
            (run / CHECKPOINT).write_bytes(_broken(good, case, tmp_path))
            before = _snapshot(out)
            assert cli.main(["simulate", *common, "--rounds", "3", "--resume", "--no-plots"]) == 2, case
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and "Traceback" not in err, err
            assert err.startswith(f"thinwire simulate: error: resume: checkpoint {str(run / CHECKPOINT)!r} "), err
            assert expected in err, (case, err)
            assert _snapshot(out) == before, case            # nothing written, nothing deleted
        # served mode reads the same files the same way: another engine's and a truncated one
        serve = ["server", *[a for a in common if a not in ("--workers", "1")], "--rounds", "3", "--resume",
                 "--insecure", "--port", "0"]
        for data, expected in ((good, "was written by `thinwire simulate`, not `thinwire server`"),
                               (good[:100], "truncated")):
            (run / CHECKPOINT).write_bytes(data)
            before = _snapshot(out)
            assert cli.main(serve) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and expected in err and str(run / CHECKPOINT) in err, err
            assert _snapshot(out) == before
        # a missing checkpoint beside finished rounds is no fresh start either
        (run / CHECKPOINT).unlink()
        before = _snapshot(out)
        assert cli.main(["simulate", *common, "--rounds", "3", "--resume", "--no-plots"]) == 2
        assert "is missing, yet metrics.jsonl holds finished rounds" in capsys.readouterr().err
        assert _snapshot(out) == before
        # the good file still resumes: round 2 follows rounds 0 and 1. Round 1's metrics row, lost
        # as if the process died (or the disk filled) right after its checkpoint, comes back from it.
        from thinwire.metrics import read_metrics
        (run / CHECKPOINT).write_bytes(good)
        rows = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        (run / "metrics.jsonl").write_text(rows[0])
        assert cli.main(["simulate", *common, "--rounds", "3", "--resume", "--no-plots"]) == 0
        assert [r["round"] for r in read_metrics(run)] == [0, 1, 2]
        assert (run / "metrics.jsonl").read_text().splitlines(keepends=True)[:2] == rows
        assert checkpoint.load(run)["round"] == 2
    finally:
        ray.shutdown()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_appends_cut_back_on_a_full_disk(tmp_path):
    """A full disk in the middle of a round's log appends: the files are cut back to where they
    were (a later --resume reads them) and the error is one line naming the file."""
    metrics, accepted = tmp_path / "metrics.jsonl", tmp_path / "accepted.jsonl"
    metrics.write_text('{"round": 0}\n')
    with pytest.raises(DiskFull) as e:
        with appending(metrics, accepted):
            with metrics.open("a") as f:
                f.write('{"round": 1, "acc')              # half a line reached the disk ...
            accepted.write_text("x")
            with open("/dev/full", "w") as f:               # ... then the device is full (real ENOSPC)
                f.write("y" * 10)
                f.flush()
    assert metrics.read_text() == '{"round": 0}\n' and not accepted.exists()
    assert e.value.field == "out_dir" and "\n" not in str(e.value)
    assert str(e.value).startswith(f"out_dir: no space left on device writing {str(tmp_path)!r}")
