"""A simulation worker actor killed with SIGKILL mid-run (issue 24): its lost batch is rerun on a
replacement actor and the run's numbers are bit-identical to a run without the kill (every task is
seeded; client state comes from the store, which only results that arrived change). A task that
kills every actor it runs on ends the run with a one-line error naming the client and round."""
import os
import signal
import textwrap
import time

import pytest
import ray

from thinwire import checkpoint
from thinwire.config import RunConfig, build
from thinwire.errors import UserError
from thinwire.sim.engine import MAX_TASK_ATTEMPTS, WorkerPool, simulate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def cfg(tmp_path, **kw):
    # error feedback: each client's residual lives in the store and changes every round it trains,
    # so a lost batch that leaked into the store would change every later round
    base = dict(clients=8, per_round=6, rounds=4, local_epochs=1, progress=False, out_dir=str(tmp_path),
                workers=2, codec="randblock:ratio=4", feedback="ef", seed=5)
    base.update(kw)
    return build(RunConfig, base)


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "round_wall")} for r in rows]


class KillOnce(WorkerPool):
    """Sends SIGKILL to the actor that has just been given the first batch of round `at`: the
    batch is in flight (submitted, not returned) when its process dies."""

    def __init__(self, cfg, at: int) -> None:
        super().__init__(cfg)
        self.at, self.killed = at, None

    def _submit(self, slot, ref, batch):
        pid = None
        if self.killed is None and batch and batch[0][0]["round"] == self.at:
            pid = ray.get(self.actors[slot].pid.remote())
        fut = super()._submit(slot, ref, batch)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.killed = (slot, pid)
        return fut


def test_killed_worker_actor_is_replaced_and_the_run_is_bit_identical(tmp_path):
    clean = simulate(cfg(tmp_path, name="clean"))
    pool = KillOnce(cfg(tmp_path, name="killed"), at=2)
    try:
        killed = simulate(cfg(tmp_path, name="killed"), pool=pool)
        assert pool.killed is not None and pool.restarts == 1
        replacement = ray.get(pool.actors[pool.killed[0]].pid.remote())
        assert replacement != pool.killed[1]
    finally:
        pool.close()
    assert len(killed.metrics) == 4
    assert _stable(killed.metrics) == _stable(clean.metrics)
    a, b = checkpoint.load(clean.run_dir), checkpoint.load(killed.run_dir)
    assert a["global"].equal(b["global"])
    # the residuals of every client (the store) are the same as without the kill
    sa, sb = _client_states(clean.run_dir, a), _client_states(killed.run_dir, b)
    assert sorted(sa) == sorted(sb) and len(sa) == 8
    for c in sa:
        assert sa[c].memory and sorted(sa[c].memory) == sorted(sb[c].memory)
        for name, mem in sa[c].memory.items():
            assert mem["residual"].equal(sb[c].memory[name]["residual"]), (c, name)


def _client_states(run_dir, ckpt):
    """Every client's state as the checkpoint's store snapshot names it (files or in memory)."""
    from thinwire.sim.store import ClientStateStore

    snap = ckpt["clients"]["store"]
    file_backed = isinstance(snap, dict) and "format" in snap
    store = ClientStateStore(run_dir / "client-state" if file_backed else None)
    store.load_state_dict(snap)
    ids = snap["clients"] if file_backed else snap
    return {int(c): store.get(int(c)) for c in ids}


KILLER = textwrap.dedent('''
    """A codec that kills the process encoding client 3's update of round 1 (a poisoned task)."""
    import os
    import signal

    from thinwire.compression.cast import Identity


    class KillerIdentity(Identity):
        name = "test-killer-identity"

        def _encode(self, x, ctx):
            if ctx.client_id == 3 and ctx.round == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._encode(x, ctx)
''')


def test_a_task_that_kills_every_actor_ends_the_run_with_one_line(tmp_path):
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    c = cfg(tmp_path, name="poisoned", clients=4, per_round=4, rounds=3, codec=f"{plugin}:KillerIdentity",
            feedback="none")
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        simulate(c)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"simulation worker lost: client 3 in round 1: {MAX_TASK_ATTEMPTS} worker actors died "
                          "running it (last: "), msg
    assert time.monotonic() - t0 < 120
    # round 0 completed and is resumable; round 1 never committed
    assert checkpoint.load(tmp_path / "poisoned")["round"] == 0
