"""A two-node Ray cluster on this machine, and `thinwire launch --ray-address` against it.

Starts a Ray head (`ray start --head --num-cpus=1`) and a second node
(`ray start --address=127.0.0.2:PORT --num-cpus=1`), each with its own ports and one shared temp dir
(with a second temp dir the probe driver hit a raylet crash trace here, Ray 2.55.1), all on the
loopback address 127.0.0.2, then runs a tiny served run with `thinwire launch --ray-address 127.0.0.2:PORT`. The
server actor and two client-fleet actors (SPREAD placement group) must run, finish the run and
be spread over both nodes, as the node ids that launch prints show. The fleet talks gRPC to the
server actor over TLS with the throwaway certificate and token that launch makes (its default).

Teardown ends only the Ray processes this test started (each node is a `ray start --block`
process in its own session, stopped with its whole process group); `ray stop` would also kill
any other Ray on the machine.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import launch_fleet_nodes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
THINWIRE = str(BIN / "thinwire")
# Ray rewrites 127.0.0.1 / localhost to the machine's outward-facing address; another loopback
# address keeps every Ray and gRPC connection of this test on the loopback interface.
NODE_IP = "127.0.0.2"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class RayNode:
    """`ray start --block` in its own session; stop() ends that process group only."""

    def __init__(self, args: list[str], log_path: Path, env: dict) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([RAY, "start", "--block", *args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM to `ray start --block` makes it stop the node's processes; then the group.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def node_args(temp_dir: str) -> list[str]:
    nm, om, mx, dal, dag, rte = free_ports(6)
    return [f"--node-ip-address={NODE_IP}", "--num-cpus=1", f"--temp-dir={temp_dir}",
            f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--metrics-export-port={mx}",
            f"--dashboard-agent-listen-port={dal}", f"--dashboard-agent-grpc-port={dag}",
            f"--runtime-env-agent-port={rte}", "--object-store-memory=100000000", "--disable-usage-stats"]


def alive_nodes(address: str, env: dict) -> list[dict]:
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'cpu': n['Resources'].get('CPU', 0)} "
            "for n in ray.nodes() if n['Alive']]))" % address)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if res.returncode != 0:
        return []
    lines = [x for x in res.stdout.splitlines() if x.startswith("[")]
    return json.loads(lines[-1]) if lines else []


@pytest.mark.timeout(900)
def test_launch_spreads_actors_over_two_ray_nodes(tmp_path):
    port = free_ports(1)[0]
    address = f"{NODE_IP}:{port}"
    # Short temp dirs: Ray's unix socket paths must stay under 108 characters.
    root = tempfile.mkdtemp(prefix="twray", dir="/tmp")
    # A longer agent-registration timeout keeps node start-up reliable on a busy 2-core machine.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
           "RAY_agent_register_timeout_ms": "120000"}
    nodes: list[RayNode] = []
    try:
        head_args = ["--head", f"--port={port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_ports(1)[0]}", *node_args(root)]
        nodes.append(RayNode(head_args, tmp_path / "head.log", env))
        t_end = time.monotonic() + 180
        while time.monotonic() < t_end:
            assert nodes[0].alive(), (tmp_path / "head.log").read_text()[-3000:]
            if subprocess.run([RAY, "health-check", "--address", address], capture_output=True, env=env).returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("Ray head did not come up:\n" + (tmp_path / "head.log").read_text()[-3000:])

        worker_args = [f"--address={address}", *node_args(root)]
        nodes.append(RayNode(worker_args, tmp_path / "worker.log", env))
        t_end = time.monotonic() + 180
        found: list[dict] = []
        while time.monotonic() < t_end:
            assert nodes[1].alive(), (tmp_path / "worker.log").read_text()[-3000:]
            found = alive_nodes(address, env)
            if len(found) >= 2:
                break
            time.sleep(2)
        assert len(found) == 2, f"expected 2 Ray nodes, found {found}"
        node_ids = {n["id"] for n in found}

        out_dir = tmp_path / "runs"
        cmd = [THINWIRE, "launch", "--ray-address", address, "--name", "raytest",
               "--out-dir", str(out_dir), "--dataset", "digits", "--clients", "4", "--per-round", "4",
               "--rounds", "2", "--client-actors", "2", "--client-cpus", "0.5", "--server-cpus", "0.5",
               "--port", "0", "--no-progress", "--timeout", "600"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=700, cwd=tmp_path)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]

        m = re.search(r"server actor: node ([0-9a-f]+) at (\S+)", out)
        assert m, out[-3000:]
        server_node = m.group(1)
        assert server_node in node_ids
        fleet_nodes = launch_fleet_nodes(out)
        full = {p: [n for n in node_ids if n.startswith(p)] for p in fleet_nodes}
        assert all(len(v) == 1 for v in full.values()), (fleet_nodes, node_ids)
        assert len(fleet_nodes) == 2, f"client actors not spread over both nodes: {fleet_nodes}\n{out[-3000:]}"

        rows = [json.loads(x) for x in (out_dir / "raytest" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert len(rows) == 2
        assert all(r["accepted"] == 4 for r in rows)
        # bytes (identity codec, float32; as in test_launch): 4 updates of numel x 4 bytes up per
        # round plus a header of under 1 KiB each; the model goes down once per client actor (its
        # fleet shares it): 2 x. The wire adds message framing on top of the payload.
        import torch

        numel = torch.load(out_dir / "raytest" / "checkpoint.pt", weights_only=True)["global"].numel()
        for r in rows:
            assert 4 * 4 * numel <= r["payload_up"] <= 4 * (4 * numel + 1024), r["payload_up"]
            assert 2 * 4 * numel <= r["payload_down"] <= 2 * (4 * numel + 1024), r["payload_down"]
            assert r["bytes_up"] > r["payload_up"] and r["bytes_down"] > r["payload_down"], r
    finally:
        for n in reversed(nodes):
            n.stop()
        subprocess.run(["rm", "-rf", root])


def test_cluster_launcher_yaml_is_valid():
    """deploy/ray-cluster.yaml passes Ray's own schema check, as given and in its on-premise form."""
    import copy

    import yaml
    from ray.autoscaler._private.local.config import prepare_local
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((REPO / "deploy" / "ray-cluster.yaml").read_text())
    validate_config(cfg)
    assert set(cfg["available_node_types"]) == {"ray.head.default", "ray.worker.default"}
    assert cfg["head_node_type"] == "ray.head.default"
    assert cfg["docker"]["image"].startswith("thinwire")
    assert any("thinwire" in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])
    # The on-premise variant described in the file's header.
    local = copy.deepcopy(cfg)
    local["provider"] = {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    del local["available_node_types"], local["head_node_type"]
    prepared = prepare_local(local)
    validate_config(prepared[0] if isinstance(prepared, tuple) else prepared)
