"""The one round engine: its closing rules on a scripted transport, tasks and result bundles on the
wire, and the proof that simulation and served mode are one implementation (same final model)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from thinwire import compression
from thinwire.config import RunConfig
from thinwire.errors import ConfigError
from thinwire.server.rounds import Arrival, RoundEngine
from thinwire.server.strategy import FedAvg, RoundView
from thinwire.task import Task, decode_result, pack_result, unpack_result

NUMEL = 6


# -- a scripted transport: arrivals at given virtual times ----------------------------------------
def _payload(delta: torch.Tensor) -> bytes:
    """identity-coded bytes of `delta`, built by hand so a NaN can reach the server (the codec
    itself refuses to encode one)."""
    return compression.Encoded(codec="identity", params={}, numel=delta.numel(),
                               sections={"values": delta.float().numpy().tobytes()}).to_bytes()


class Scripted:
    """Arrivals given per round as {client: (time, delta)}; a clock that jumps to each event."""
    clock = "virtual"
    segments = None
    refusal_is_final = True

    def __init__(self, script: dict[int, dict[int, tuple[float, torch.Tensor]]], late: list | None = None):
        self.script, self.extra = script, late or []
        self.verdicts: dict[tuple[int, int], str] = {}

    def candidates(self, rnd):
        return sorted(self.script[rnd])

    def open_round(self, rnd, vec, tasks):
        self.now_t, self.tasks = 0.0, tasks
        evs = []
        for cid, (t, delta) in self.script[rnd].items():
            evs.append(Arrival(cid, rnd, tasks[cid].job_id, _payload(delta), {"num_samples": 1.0}, t,
                               reply=self._rec((rnd, cid))))
        for (r, cid, t, delta) in self.extra:                   # results of earlier rounds
            if r == rnd - 1:
                evs.append(Arrival(cid, r, r, _payload(delta), {"num_samples": 1.0}, t, reply=self._rec((r, cid))))
        self.queue = sorted(evs, key=lambda a: a.time)

    def _rec(self, key):
        return lambda v, m: self.verdicts.__setitem__(key, v)

    def now(self):
        return self.now_t

    def next_event(self, until):
        if self.queue and self.queue[0].time <= until:
            a = self.queue.pop(0)
            self.now_t = max(self.now_t, a.time)
            return a
        if math.isinf(until):
            return None
        self.now_t = until
        return None

    def close_round(self, rnd, keep_late):
        for a in self.queue:
            a.answer("late", "")
        self.queue = []
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def _cfg(tmp_path, **kw):
    base = dict(name="eng", out_dir=str(tmp_path), clients=4, per_round=2, rounds=1, progress=False,
                strategy="fedavg")
    base.update(kw)
    return RunConfig(**base).validate()


def _ones(v):
    return torch.full((NUMEL,), float(v))


def test_first_k_closes_at_kth_arrival_and_later_ones_are_late(tmp_path):
    script = {0: {0: (3.0, _ones(1)), 1: (1.0, _ones(2)), 2: (2.0, _ones(4)), 3: (9.0, _ones(8))}}
    tr = Scripted(script)
    eng = RoundEngine(_cfg(tmp_path, overcommit=2.0), tr, torch.zeros(NUMEL))
    eng.run()
    row = eng.metrics[0]
    assert row["accepted_clients"] == [1, 2] and row["round_time"] == 2.0
    assert torch.equal(eng.global_vec, _ones(3))                 # mean of 2 and 4 (plain FedAvg, lr 1)
    assert tr.verdicts == {(0, 1): "accepted", (0, 2): "accepted", (0, 0): "late", (0, 3): "late"}


def test_deadline_closes_the_round_and_min_clients_keeps_the_model(tmp_path):
    script = {0: {0: (1.0, _ones(1)), 1: (5.0, _ones(2)), 2: (6.0, _ones(3)), 3: (7.0, _ones(4))}}
    eng = RoundEngine(_cfg(tmp_path, per_round=3, overcommit=1.34, deadline=2.5, min_clients=2),
                      Scripted(script), torch.zeros(NUMEL))
    eng.run()
    row = eng.metrics[0]
    assert row["round_time"] == 2.5 and row["accepted_clients"] == [0] and row["aggregated"] == 0
    assert torch.equal(eng.global_vec, torch.zeros(NUMEL))


class CloseAtTwiceFastest(FedAvg):
    """A strategy-owned closing rule that names a time: (1 + mu) * fastest, mu = 1."""
    def should_close(self, view: RoundView):
        return False if not view.arrived else 2.0 * min(view.arrived.values())


def test_strategy_closing_time_and_synchronous_rule(tmp_path):
    script = {0: {0: (1.0, _ones(1)), 1: (1.5, _ones(2)), 2: (2.5, _ones(3)), 3: (4.0, _ones(4))}}
    cfg = _cfg(tmp_path, per_round=4)
    eng = RoundEngine(cfg, Scripted(script), torch.zeros(NUMEL), strategy=CloseAtTwiceFastest(cfg))
    eng.run()
    assert eng.metrics[0]["accepted_clients"] == [0, 1] and eng.metrics[0]["round_time"] == 2.0
    eng2 = RoundEngine(_cfg(tmp_path, name="sync", per_round=4), Scripted(script), torch.zeros(NUMEL))
    eng2.run()
    assert eng2.metrics[0]["accepted"] == 4 and eng2.metrics[0]["round_time"] == 4.0


class Delayed(FedAvg):
    max_delay = 1


def test_results_of_earlier_rounds_count_only_when_the_strategy_says_so(tmp_path):
    rnd = {0: (1.0, _ones(1)), 1: (2.0, _ones(1)), 2: (5.0, _ones(1))}     # client 2 is the slow one
    late = [(0, 2, 0.5, _ones(1))]                    # its round-0 result reaches the server in round 1
    for strategy, want in ((FedAvg, "late"), (Delayed, "accepted")):
        cfg = _cfg(tmp_path, clients=3, rounds=2, overcommit=1.5, name=want)
        tr = Scripted({0: rnd, 1: rnd}, late)
        eng = RoundEngine(cfg, tr, torch.zeros(NUMEL), strategy=strategy(cfg), checkpoints=False)
        eng.run()
        assert eng.metrics[0]["accepted_clients"] == [0, 1]
        assert tr.verdicts[(0, 2)] == want
        assert eng.metrics[1]["delayed_accepted"] == (want == "accepted")


def test_a_refused_result_leaves_the_round_going(tmp_path):
    bad = torch.tensor([1.0, float("nan"), 0, 0, 0, 0])
    script = {0: {0: (1.0, bad), 1: (2.0, _ones(2)), 2: (3.0, _ones(4))}}
    tr = Scripted(script)
    eng = RoundEngine(_cfg(tmp_path, clients=3, per_round=3), tr, torch.zeros(NUMEL))
    eng.run()
    assert eng.metrics[0]["accepted_clients"] == [1, 2] and eng.metrics[0]["rejected_pushes"] == 1
    assert tr.verdicts[(0, 0)] == "refused" and torch.equal(eng.global_vec, _ones(3))


def test_resume_under_other_settings_names_the_fields(tmp_path):
    script = {0: {0: (1.0, _ones(1)), 1: (2.0, _ones(1))}, 1: {0: (1.0, _ones(1)), 1: (2.0, _ones(1))}}
    RoundEngine(_cfg(tmp_path, rounds=1), Scripted(script), torch.zeros(NUMEL)).run()
    with pytest.raises(ConfigError, match=r"lr: 0\.05 -> 0\.5"):
        RoundEngine(_cfg(tmp_path, rounds=2, lr=0.5), Scripted(script), torch.zeros(NUMEL), resume=True)
    eng = RoundEngine(_cfg(tmp_path, rounds=2), Scripted(script), torch.zeros(NUMEL), resume=True)
    assert eng.resumed_from == 1
    eng.run()
    assert [r["round"] for r in eng.metrics] == [1]
    import tomllib
    assert tomllib.loads((tmp_path / "eng" / "config.toml").read_text())["rounds"] == 2


# -- tasks and results on the wire ----------------------------------------------------------------
def test_task_fields_survive_json_and_bad_tasks_are_refused():
    t = Task(kind="coded_gradient", round=3, client_id=7, seed=1, codec="eden:bits=2", job=1,
             params={"parts": [1, 2], "coeffs": [0.5, -1.0], "nested": {"a": [1, {"b": 2}]}})
    back = Task.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and back.job_id == 1 and Task(kind="train", round=3, client_id=0).job_id == 3
    with pytest.raises(ValueError, match="params"):
        Task(kind="x", round=0, client_id=0, params={"t": torch.zeros(1)})
    for bad in ({"kind": 1, "round": 0, "client_id": 0}, {"kind": "x", "round": 0, "client_id": 0, "evil": 1}, []):
        with pytest.raises(ValueError, match="task"):
            Task.from_dict(bad)


def test_result_bundle_round_trip_with_holes_per_tensor():
    g = torch.Generator().manual_seed(0)
    task = Task(kind="jacobian", round=2, client_id=5, seed=9, codec="eden:bits=4")
    eden, ident = compression.from_spec("eden:bits=4"), compression.get("identity")
    jac, labels = torch.randn(4, 3, 50, generator=g), torch.arange(4.0)
    items = {"jacobian": (eden.encode(jac.reshape(-1), task.codec_context("jacobian")), jac.shape, False),
             "labels": (ident.encode(labels, task.codec_context("labels")), labels.shape, False)}
    enc = pack_result(items)
    payload = enc.to_bytes()
    out = decode_result(payload, task, None)
    assert out["labels"].shape == (4,) and torch.equal(out["labels"], labels)
    assert out["jacobian"].shape == (4, 3, 50)
    direct = eden.decode(items["jacobian"][0], task.codec_context("jacobian")).reshape(4, 3, 50)
    assert torch.equal(out["jacobian"], direct)
    # a hole inside the jacobian's body maps onto that tensor's own sections only
    jac_start, jac_end = enc.section_offsets()[f"jacobian/{next(iter(items['jacobian'][0].sections))}"]
    hole = [(jac_start, jac_start + 16)]
    unpacked = {i.name: i for i in unpack_result(payload, hole)}
    assert unpacked["jacobian"].enc.holes == [(0, 16)] and unpacked["labels"].enc.holes == []
    # a lone model delta stays a plain Encoded (the FedAvg zero-copy path)
    d = ident.encode(torch.ones(5))
    assert pack_result({"delta": (d, (5,), True)}) is d


# -- one implementation: simulate == server + client processes ------------------------------------
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _served(tmp_path: Path, name: str, args: list[str], clients: int, timeout: float = 180) -> Path:
    port_file = tmp_path / f"{name}.port"
    srv = subprocess.Popen([sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--host", "127.0.0.1",
                            "--port", "0", "--port-file", str(port_file), "--out-dir", str(tmp_path), "--name", name,
                            "--no-progress", "--linger", "1", *args],
                           stdout=open(tmp_path / f"{name}-server.log", "w"), stderr=subprocess.STDOUT, env=ENV)
    try:
        t_end = time.monotonic() + 60
        while not port_file.exists():
            assert srv.poll() is None and time.monotonic() < t_end, (tmp_path / f"{name}-server.log").read_text()
            time.sleep(0.05)
        cli = subprocess.Popen([sys.executable, "-m", "thinwire.cli", "client", "--insecure", "--server",
                                f"127.0.0.1:{port_file.read_text()}", "--virtual-clients", str(clients), "--parallel",
                                "2", "--max-wait", "60"],
                               stdout=open(tmp_path / f"{name}-client.log", "w"), stderr=subprocess.STDOUT, env=ENV)
        assert srv.wait(timeout) == 0, (tmp_path / f"{name}-server.log").read_text()[-3000:]
        assert cli.wait(60) == 0, (tmp_path / f"{name}-client.log").read_text()[-3000:]
    finally:
        for p in (srv, locals().get("cli")):
            if p is not None and p.poll() is None:
                p.kill()
    return tmp_path / name


def _final(run_dir: Path) -> tuple[torch.Tensor, list[float]]:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    accs = [json.loads(x)["accuracy"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ckpt["global"], accs


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_simulate_and_served_give_the_same_model(tmp_path):
    from thinwire.sim.engine import simulate

    settings = dict(clients=4, per_round=4, rounds=3, lr=0.1, seed=3, codec="identity")
    sim = simulate(RunConfig(name="sim", out_dir=str(tmp_path), progress=False, workers=1, **settings))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    served = _served(tmp_path, "served", args, clients=4)
    g_sim, acc_sim = _final(sim.run_dir)
    g_srv, acc_srv = _final(served)
    assert acc_sim == acc_srv and len(acc_sim) == 3
    assert torch.allclose(g_sim, g_srv, rtol=0, atol=1e-6), (g_sim - g_srv).abs().max()
    assert acc_sim[-1] > acc_sim[0]                            # and it learned


PLUGIN = textwrap.dedent('''
    """A user's own codec, client task kind and strategy, outside thinwire."""
    import numpy as np
    import torch

    from thinwire.client.kinds import KindOutput, register_kind, train
    from thinwire.compression.base import Codec, new_encoded
    from thinwire.server.strategy import FedAvg
    from thinwire.task import Task


    class ScaledSign(Codec):
        """1 bit per coordinate: sign(x) times the mean |x| (signSGD with a scale)."""
        name = "user-scaledsign"

        def _encode(self, x, ctx):
            scale = np.float32(x.abs().mean())
            bits = np.packbits((x >= 0).numpy().astype(np.uint8))
            return new_encoded(scale=scale.tobytes(), signs=bits.tobytes())

        def _decode(self, enc, ctx, device):
            scale = float(np.frombuffer(bytes(enc.sections["scale"]), dtype=np.float32)[0])
            bits = np.unpackbits(np.frombuffer(bytes(enc.sections["signs"]), dtype=np.uint8))[:enc.numel]
            return torch.from_numpy(bits.astype(np.float32) * 2 - 1) * scale


    @register_kind("user-clipped-train")
    def clipped_train(ctx, task):
        out = train(ctx, task)
        d = out.tensors["delta"]
        out.tensors["delta"] = d * min(1.0, task.params["clip"] / max(float(d.norm()), 1e-12))
        return out


    class ClippedFedAvg(FedAvg):
        """FedAvg of client deltas clipped to an L2 norm on the clients."""
        name = "user-clipped"

        def configure_client(self, rnd, cid):
            t = super().configure_client(rnd, cid)
            return Task(**{**t.to_dict(), "kind": "user-clipped-train", "params": {**t.params, "clip": 0.5}})
''')


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_user_strategy_codec_and_kind_run_in_both_modes(tmp_path):
    from thinwire.sim.engine import simulate

    plugin = tmp_path / "elsewhere" / "my_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    settings = dict(clients=4, per_round=4, rounds=4, lr=0.1, seed=1, strategy=f"{plugin}:ClippedFedAvg",
                    codec=f"{plugin}:ScaledSign")
    sim = simulate(RunConfig(name="sim", out_dir=str(tmp_path), progress=False, workers=2, **settings))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    served = _served(tmp_path, "served", args, clients=4)
    g_sim, acc_sim = _final(sim.run_dir)
    g_srv, acc_srv = _final(served)
    assert torch.allclose(g_sim, g_srv, rtol=0, atol=1e-6) and acc_sim == acc_srv
    # the user codec was on the wire: ~1 bit per coordinate instead of 32
    numel = g_sim.numel()
    per_client = sim.metrics[0]["payload_up"] / 4
    assert numel / 8 < per_client < numel / 8 + 400
    # the clip held: a decoded delta has norm mean|x| * sqrt(d) <= ||x|| <= clip (Cauchy-Schwarz), so
    # the mean of them moves the model by at most the clip per round (plain FedAvg, server lr 1)
    from thinwire.training import build_run_model
    from thinwire.data.datasets import dataset_from_config
    cfg = RunConfig(name="x", out_dir=str(tmp_path), **settings).validate()
    g0, _, _ = build_run_model(cfg, dataset_from_config(cfg))
    assert float((g_sim - g0).norm()) <= 4 * 0.5 + 1e-5
    assert acc_sim[-1] > acc_sim[0]                            # and it still learns
