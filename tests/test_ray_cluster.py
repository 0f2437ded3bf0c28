"""A two-node Ray cluster on this machine, and `thinwire launch --ray-address` against it.

Starts a Ray head (`ray start --head --num-cpus=1`) and a second node
(`ray start --address=127.0.0.2:PORT --num-cpus=1`), each with its own temp dir and ports, all on the
loopback address 127.0.0.2, then runs a tiny served run with `thinwire launch --ray-address 127.0.0.2:PORT`. The
server actor and two client-fleet actors (SPREAD placement group) must run, finish the run and
be spread over both nodes, as the node ids that launch prints show.

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
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_launch_spreads_actors_over_two_ray_nodes(tmp_path):
    port = free_ports(1)[0]
    address = f"{NODE_IP}:{port}"
    # Short temp dirs: Ray's unix socket paths must stay under 108 characters.
    root = tempfile.mkdtemp(prefix="twray", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
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
        cmd = [THINWIRE, "launch", "--ray-address", address, "--insecure", "--name", "raytest",
               "--out-dir", str(out_dir), "--dataset", "digits", "--clients", "4", "--per-round", "4",
               "--rounds", "2", "--client-actors", "2", "--client-cpus", "0.5", "--server-cpus", "0.5",
               "--no-progress", "--timeout", "600"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=700, cwd=tmp_path)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]

        m = re.search(r"server actor: node ([0-9a-f]+) at (\S+)", out)
        assert m, out[-3000:]
        server_node = m.group(1)
        assert server_node in node_ids
        # Client actor table rows: "<index> | <node id prefix> | <ip> | a..b | ..." (any column separator).
        fleet_nodes = set()
        for line in out.splitlines():
            cells = [c for c in re.split(r"\s*\|\s*|\s{2,}", line.strip()) if c]
            if len(cells) >= 4 and cells[0].isdigit() and re.fullmatch(r"[0-9a-f]{8,}", cells[1]) \
                    and re.fullmatch(r"\d+\.\.\d+", cells[3]):
                fleet_nodes.add(cells[1])
        full = {p: [n for n in node_ids if n.startswith(p)] for p in fleet_nodes}
        assert all(len(v) == 1 for v in full.values()), (fleet_nodes, node_ids)
        assert len(fleet_nodes) == 2, f"client actors not spread over both nodes: {fleet_nodes}\n{out[-3000:]}"

        rows = [json.loads(x) for x in (out_dir / "raytest" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert len(rows) == 2
        assert all(r["accepted"] == 4 for r in rows)
        assert rows[-1]["bytes_up"] > 0 and rows[-1]["bytes_down"] > 0
    finally:
        for n in reversed(nodes):
            n.stop()
        subprocess.run(["rm", "-rf", root])
