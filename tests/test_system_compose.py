"""System test: the docker-compose local cluster, end to end, on a real Docker engine.

Builds the thinwire image (offline: a Debian base image and a wheelhouse made on this machine by
deploy/offline-base.sh, since no image registry is reachable), brings the compose stack up with a
one-shot certs service, a TLS + token gRPC parameter server and three client containers, waits
for the run to finish and checks its metrics: every round completed, accuracy well above chance,
bytes counted both ways. A second test runs the `ray` profile: a Ray head, two Ray workers and a
launcher that runs `thinwire launch` against them.

Docker is made usable by deploy/start-dockerd.sh (installs docker.io with apt and starts dockerd
when needed and allowed); when it cannot be, the tests skip and say why. Set
THINWIRE_COMPOSE_ONLINE=1 to build from the registry (python:3.11-slim + PyPI) instead.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 5
N_CLIENTS = 3


def log(msg: str) -> None:
    print(f"[compose-test] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True,
       capture: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, text=True,
                         stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if check and res.returncode != 0:
        tail = "\n".join((res.stdout or "").splitlines()[-40:])
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n{tail}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def image() -> str:
    """Docker usable + the thinwire image built; skips with the reason when docker cannot be had."""
    res = subprocess.run(["bash", str(REPO / "deploy/start-dockerd.sh")], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        reason = (res.stderr.strip().splitlines() or ["start-dockerd.sh failed"])[-1]
        log(f"SKIP: {reason}")
        pytest.skip(f"docker is not usable here: {reason}")
    if compose_command() is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    tag = f"thinwire:systest-{uuid.uuid4().hex[:8]}"
    args: list[str] = []
    if os.environ.get("THINWIRE_COMPOSE_ONLINE") != "1":
        t0 = time.monotonic()
        res = sh(["bash", "deploy/offline-base.sh", "--env"], timeout=1200)
        env_lines = dict(line.split("=", 1) for line in res.stdout.splitlines() if line.startswith("THINWIRE_"))
        args = ["--build-arg", f"BASE_IMAGE={env_lines['THINWIRE_BASE_IMAGE']}",
                "--build-arg", f"WHEELHOUSE={env_lines['THINWIRE_WHEELHOUSE']}"]
        log(f"offline base + wheelhouse ready in {time.monotonic() - t0:.0f}s: {env_lines}")
    t0 = time.monotonic()
    sh(["docker", "build", "-q", "-f", "deploy/Dockerfile", *args, "-t", tag, "."], timeout=1800,
       env={**os.environ, "DOCKER_BUILDKIT": os.environ.get("DOCKER_BUILDKIT", "0")})
    log(f"built {tag} in {time.monotonic() - t0:.0f}s")
    out = sh(["docker", "run", "--rm", tag, "--help"]).stdout
    assert "server" in out and "client" in out and "launch" in out
    yield tag
    subprocess.run(["docker", "rmi", tag], capture_output=True)


def read_container_file(cid: str, path: str) -> str:
    """A file of a (possibly stopped) container, via `docker cp` (a tar stream)."""
    res = subprocess.run(["docker", "cp", f"{cid}:{path}", "-"], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        member = tar.getmembers()[0]
        return tar.extractfile(member).read().decode()


def record(kind: str, **figures) -> None:
    """Append measured figures to runs/compose-timings.jsonl (for docs/BENCHMARKS.md)."""
    out = REPO / "runs" / "compose-timings.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}) + "\n")


class Stack:
    """A compose project with its own name, ports and volumes; `down -v` on exit."""

    def __init__(self, image: str, **env: str) -> None:
        self.project = f"twtest{uuid.uuid4().hex[:8]}"
        self.compose = compose_command()
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project, "THINWIRE_IMAGE": image,
                    "THINWIRE_SERVER_PORT": str(free_port()), "THINWIRE_RAY_DASHBOARD_PORT": str(free_port()),
                    "THINWIRE_PROGRESS": "false", **env}

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return sh([*self.compose, "-f", str(REPO / "docker-compose.yml"), *args], env=self.env, timeout=timeout,
                  check=check)

    def containers(self, service: str) -> list[str]:
        out = sh(["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                  "--filter", f"label=com.docker.compose.service={service}"]).stdout
        return out.split()

    def state(self, cid: str) -> dict:
        return json.loads(sh(["docker", "inspect", "--format", "{{json .State}}", cid]).stdout)

    def logs(self, cid: str) -> str:
        return sh(["docker", "logs", cid], check=False).stdout

    def wait_exit(self, cid: str, timeout: float) -> int:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            st = self.state(cid)
            if st["Status"] in ("exited", "dead") and not st.get("Restarting"):
                return int(st["ExitCode"])
            time.sleep(2)
        raise AssertionError(f"container {cid[:12]} still running after {timeout:.0f}s")

    def dump(self) -> None:
        for svc in ("certs", "server", "client", "ray-head", "ray-worker", "ray-launch"):
            for cid in self.containers(svc):
                log(f"---- logs of {svc} {cid[:12]} ----\n" + "\n".join(self.logs(cid).splitlines()[-60:]))

    def down(self) -> None:
        self.run("--profile", "ray", "down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)


@pytest.mark.timeout(1800)
def test_compose_served_run_finishes_with_tls(image):
    stack = Stack(image, THINWIRE_CLIENTS=str(N_CLIENTS), THINWIRE_PER_ROUND=str(N_CLIENTS),
                  THINWIRE_ROUNDS=str(ROUNDS), THINWIRE_NAME="systest", THINWIRE_LINGER="10")
    ok = False
    try:
        t_up = time.monotonic()
        stack.run("up", "-d", "--no-build", "--scale", f"client={N_CLIENTS}", timeout=600)
        t_started = time.monotonic()
        [server] = stack.containers("server")
        clients = stack.containers("client")
        assert len(clients) == N_CLIENTS

        # Time from `up` to the first finished round, read off the server's metrics file.
        first_round_s = None
        t_end = time.monotonic() + 900
        while time.monotonic() < t_end:
            st = stack.state(server)
            if st["Status"] == "exited":
                break
            res = sh(["docker", "exec", server, "cat", "/data/runs/systest/metrics.jsonl"], check=False)
            if res.returncode == 0 and res.stdout.strip():
                first_round_s = time.monotonic() - t_up
                break
            time.sleep(0.5)
        assert first_round_s is not None, "no round finished"
        log(f"`up` returned after {t_started - t_up:.1f}s; first round finished {first_round_s:.1f}s after `up`")

        code = stack.wait_exit(server, 900)
        server_log = stack.logs(server)
        assert code == 0, f"server exited {code}"
        total_s = time.monotonic() - t_up
        for cid in clients:
            assert stack.wait_exit(cid, 120) == 0, f"client {cid[:12]} failed:\n{stack.logs(cid)[-3000:]}"

        # TLS and distinct client ids per replica.
        assert "tls" in server_log.lower(), server_log[-2000:]
        ids = set()
        for cid in clients:
            text = stack.logs(cid)
            line = next(x for x in text.splitlines() if "hosts client ids" in x)
            ids.add(line.rsplit(" ", 1)[-1])
            assert "updates accepted" in text
        assert ids == {f"{i}..{i}" for i in range(N_CLIENTS)}, ids

        # The metrics in the runs volume (read from the stopped server container).
        text = read_container_file(server, "/data/runs/systest/metrics.jsonl")
        rows = [json.loads(x) for x in text.splitlines() if x.strip()]
        assert len(rows) == ROUNDS, rows
        last = rows[-1]
        assert last["accuracy"] > 0.5, f"digits accuracy {last['accuracy']} (chance is 0.1)"
        assert all(r["accepted"] == N_CLIENTS for r in rows), [r["accepted"] for r in rows]
        assert sum(r["bytes_up"] for r in rows) > 0 and sum(r["bytes_down"] for r in rows) > 0
        log(f"served run: {ROUNDS} rounds, accuracy {last['accuracy']:.3f}, "
            f"up {sum(r['bytes_up'] for r in rows)} B, down {sum(r['bytes_down'] for r in rows)} B, "
            f"first round {first_round_s:.1f}s after up, whole run {total_s:.1f}s")
        record("served", first_round_s=round(first_round_s, 1), total_s=round(total_s, 1), rounds=ROUNDS,
                clients=N_CLIENTS, accuracy=last["accuracy"], compose=" ".join(stack.compose))
        ok = True
    finally:
        if not ok:
            stack.dump()
        stack.down()
