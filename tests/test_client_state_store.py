"""ClientStateStore, file-backed (issue 21): exact round trip, exact through checkpoint/resume
(also after a crash between a put and the next checkpoint), bounded files on disk, fp16 error
within its rounding bound, clear errors."""
from __future__ import annotations

import pytest
import torch
from thinwire.client.runtime import ClientState

from thinwire import checkpoint
from thinwire.sim.store import ClientStateStore


def _state(seed: int, d: int = 1000) -> ClientState:
    g = torch.Generator().manual_seed(seed)
    res = torch.randn(d, generator=g) * 10.0 ** float(torch.randint(-6, 3, (1,), generator=g))
    res[0] = float("inf") if seed % 2 else -0.0                 # bits that a lossy path would change
    return ClientState(
        memory={"update": {"kind": "def", "coeff": 0.3, "steps": seed, "residual": res},
                "other": {"kind": "ef", "coeff": 0.0, "steps": 1, "residual": None}},
        kind_state={"point": torch.randn(3, 7, generator=g).double(), "mask": torch.rand(11, generator=g) > 0.5,
                    "ids": [torch.arange(seed, seed + 5), 4, "x"], "empty": torch.zeros(0)},
        rounds=seed + 1)


def _same(a: ClientState, b: ClientState) -> None:
    def eq(x, y):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x.view(-1).view(torch.uint8) if x.numel() else x,
                               y.view(-1).view(torch.uint8) if y.numel() else y)      # bit for bit
        elif isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                eq(x[k], y[k])
        elif isinstance(x, (list, tuple)):
            assert type(x) is type(y) and len(x) == len(y)
            for u, v in zip(x, y):
                eq(u, v)
        else:
            assert x == y
    eq(a.memory, b.memory)
    eq(a.kind_state, b.kind_state)
    assert a.rounds == b.rounds


def test_files_round_trip_bit_for_bit(tmp_path):
    s = ClientStateStore(tmp_path / "cs")
    for c in range(5):
        s.put(c, _state(c))
    assert s.get(99) is None and len(s) == 5
    for c in range(5):
        _same(s.get(c), _state(c))
    s.put(2, _state(20))                                       # overwrite: old file removed (not pinned)
    _same(s.get(2), _state(20))
    assert len(list((tmp_path / "cs").iterdir())) == 5
    s.put(3, ClientState())                                    # empty state: ignored, as in memory
    _same(s.get(3), _state(3))


def test_checkpoint_resume_is_exact_and_survives_a_crash_after_later_puts(tmp_path):
    run = tmp_path / "run"
    a = ClientStateStore(run / "client-state")
    for c in range(6):
        a.put(c, _state(c))
    checkpoint.save(run, {"round": 0, "clients": {"store": a.state_dict()}})
    committed = {c: _state(c) for c in range(6)}
    # round 1 runs: some clients change, then the process dies before the next checkpoint
    for c in (1, 4):
        a.put(c, _state(100 + c))
    a.put(9, _state(9))
    del a
    b = ClientStateStore(run / "client-state")
    b.load_state_dict(checkpoint.load(run)["clients"]["store"])
    assert sorted(b._index) == list(range(6))
    for c, st in committed.items():
        _same(b.get(c), st)
    assert len(list((run / "client-state").iterdir())) == 6    # the crashed round's files are gone
    # and it goes on: new puts, new checkpoints, resume again
    b.put(4, _state(44))
    checkpoint.save(run, {"round": 1, "clients": {"store": b.state_dict()}})
    c2 = ClientStateStore(run / "client-state")
    c2.load_state_dict(checkpoint.load(run)["clients"]["store"])
    _same(c2.get(4), _state(44))
    _same(c2.get(5), _state(5))


def test_files_on_disk_stay_bounded_over_many_rounds(tmp_path):
    s = ClientStateStore(tmp_path)
    for rnd in range(8):
        for c in range(4):
            s.put(c, _state(10 * rnd + c, d=100))
        s.state_dict()
        # live (4) + the files the previous, still committed, snapshot names (<= 4)
        assert len(list(tmp_path.glob("*.state"))) <= 8
    s.state_dict()
    s.state_dict()
    assert len(list(tmp_path.glob("*.state"))) == 4


def test_legacy_in_memory_snapshot_loads_into_files_and_memory_store_round_trips(tmp_path):
    m = ClientStateStore()
    for c in range(3):
        m.put(c, _state(c))
    snap = m.state_dict()
    f = ClientStateStore(tmp_path)
    f.load_state_dict(snap)
    for c in range(3):
        _same(f.get(c), _state(c))
    m2 = ClientStateStore()
    m2.load_state_dict(snap)
    _same(m2.get(1), _state(1))
    with pytest.raises(ValueError, match="^state: this checkpoint keeps client state in files"):
        ClientStateStore().load_state_dict(f.state_dict())


def test_missing_file_refused_with_a_clear_error(tmp_path):
    s = ClientStateStore(tmp_path / "a")
    s.put(0, _state(0))
    snap = s.state_dict()
    for p in (tmp_path / "a").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"^state: 1 client state file\(s\) missing"):
        ClientStateStore(tmp_path / "a").load_state_dict(snap)
    with pytest.raises(ValueError, match="^dtype:"):
        ClientStateStore(tmp_path, dtype="int8")


def test_float16_storage_error_within_half_an_ulp(tmp_path):
    s = ClientStateStore(tmp_path, dtype="float16")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g) * 0.01               # inside fp16's normal range (>= 6.1e-5 mostly)
    st = ClientState(memory={"u": {"kind": "ef", "coeff": 0.0, "steps": 0, "residual": x}}, rounds=1)
    s.put(0, st)
    y = s.get(0).memory["u"]["residual"]
    assert y.dtype == torch.float32
    normal = x.abs() >= 2.0 ** -14
    rel = ((y - x).abs() / x.abs())[normal]
    assert float(rel.max()) <= 2.0 ** -11                      # round to nearest, 11-bit significand
    assert float(rel.mean()) > 2.0 ** -14                      # and it is really rounded (not stored fp32)
    sub = ~normal                                              # subnormals: absolute error <= half their spacing
    assert float((y - x).abs()[sub].max()) <= 2.0 ** -25
    assert s.disk_bytes() == 2 * x.numel()
