"""System tests: the docker-compose local cluster, end to end, on a real Docker engine.

Builds the thinwire image (offline: a Debian base image and a wheelhouse made on this machine by
deploy/offline-base.sh, since no image registry is reachable), brings the compose stack up with a
one-shot certs service, a mutual-TLS + token gRPC parameter server and three client containers,
waits for the run to finish and checks its metrics: every round completed, accuracy well above
chance, bytes counted both ways. A second docker test runs the `ray` profile: a Ray head, two Ray
workers and a launcher that runs `thinwire launch` against them. Both are marked docker + slow.

Docker is made usable by deploy/start-dockerd.sh (installs docker.io with apt and starts dockerd
when needed and allowed); when it cannot be, the docker tests skip and say why. Set
THINWIRE_COMPOSE_ONLINE=1 to build from the registry (python:3.11-slim + PyPI) instead.

Two fast tests (no docker) run the image's entrypoint on this machine and check how THINWIRE_*
environment variables become flags.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from helpers import in_process_run, launch_fleet_nodes
from thinwire.collective.group import free_port

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 5
N_CLIENTS = 3


def log(msg: str) -> None:
    print(f"[compose-test] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True,
       capture: bool = True) -> subprocess.CompletedProcess:
    # docker-compose v1 is a Python program of the host's own: keep this venv's paths out of it.
    env = {k: v for k, v in (env if env is not None else os.environ).items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    res = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, text=True,
                         stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if check and res.returncode != 0:
        tail = "\n".join((res.stdout or "").splitlines()[-40:])
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n{tail}")
    return res


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
        # pip download runs with this interpreter (Python 3.11, like the image).
        res = sh(["bash", "deploy/offline-base.sh", "--env"], timeout=1200,
                 env={**os.environ, "THINWIRE_HOST_PYTHON": os.environ.get("THINWIRE_HOST_PYTHON", sys.executable)})
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
        f.write(json.dumps({"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "loadavg_1m": round(os.getloadavg()[0], 1), **figures}) + "\n")


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


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_served_run_finishes_with_tls(image, tmp_path):
    stack = Stack(image, THINWIRE_CLIENTS=str(N_CLIENTS), THINWIRE_PER_ROUND=str(N_CLIENTS),
                  THINWIRE_ROUNDS=str(ROUNDS), THINWIRE_NAME="systest", THINWIRE_LINGER="10",
                  THINWIRE_JOIN_WAIT="300")
    ok = False
    try:
        t_up = time.monotonic()
        stack.run("up", "-d", "--no-build", "--scale", f"client={N_CLIENTS}", timeout=600)
        t_started = time.monotonic()
        [server] = stack.containers("server")
        clients = stack.containers("client")
        assert len(clients) == N_CLIENTS

        # The wire is TLS-only: the health probe answers over TLS and fails when it tries plaintext.
        ok_tls = sh(["docker", "exec", server, "thinwire-entrypoint", "health"], check=False)
        plain = sh(["docker", "exec", "-e", "THINWIRE_HEALTH_TLS_CA=", server, "thinwire-entrypoint", "health"],
                   check=False)
        assert ok_tls.returncode == 0, ok_tls.stdout
        assert plain.returncode != 0, f"plaintext gRPC was answered: {plain.stdout}"

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

        # Mutual TLS flags reached the server; each replica hosted its own client id.
        assert "--tls-cert /certs/server.pem" in server_log and "--tls-ca /certs/ca.pem" in server_log
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
        assert last["accuracy"] > rows[0]["accuracy"], [r["accuracy"] for r in rows]
        assert all(r["accepted"] == N_CLIENTS for r in rows), [r["accepted"] for r in rows]
        # Every client every round, local training seeded per (round, client), an exact server sum:
        # the served run is the in-process simulation of the same settings (as in test_launch), so
        # the same accuracy each round, up to 3 of the test points should the image's torch build
        # round differently from this machine's (same build: equal).
        numel, n_test = _model_size_and_test_count()
        inproc = in_process_run(tmp_path / "inproc", clients=N_CLIENTS, per_round=N_CLIENTS, rounds=ROUNDS)
        for got, want in zip([r["accuracy"] for r in rows], [m["accuracy"] for m in inproc.metrics]):
            assert abs(got - want) <= 3 / n_test, ([r["accuracy"] for r in rows], [m["accuracy"] for m in inproc.metrics])
        # bytes (identity codec, float32): each client uploads numel x 4 bytes plus a header of
        # under 1 KiB and downloads the model once (one client per container); the wire adds framing
        for r in rows:
            assert N_CLIENTS * 4 * numel <= r["payload_up"] <= N_CLIENTS * (4 * numel + 1024), r
            assert N_CLIENTS * 4 * numel <= r["payload_down"] <= N_CLIENTS * (4 * numel + 1024), r
            assert r["bytes_up"] > r["payload_up"] and r["bytes_down"] > r["payload_down"], r
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


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_ray_profile_runs_launch_on_ray_nodes(image):
    stack = Stack(image, THINWIRE_CLIENTS="4", THINWIRE_PER_ROUND="4", THINWIRE_ROUNDS="3",
                  THINWIRE_NAME="systest-ray", THINWIRE_RAY_NODES="4", THINWIRE_CLIENT_ACTORS="2",
                  THINWIRE_CLIENT_CPUS="0.5", THINWIRE_SERVER_CPUS="0.5")
    ok = False
    try:
        t_up = time.monotonic()
        stack.run("--profile", "ray", "up", "-d", "--no-build", "--scale", "ray-worker=2",
                  "ray-head", "ray-worker", "ray-launch", timeout=600)
        [launcher] = stack.containers("ray-launch")
        assert len(stack.containers("ray-worker")) == 2
        code = stack.wait_exit(launcher, 900)
        text = stack.logs(launcher)
        assert code == 0, text[-4000:]
        assert "Ray cluster has 4 nodes" in text
        m = re.search(r"server actor: node ([0-9a-f]+) at (\S+)", text)
        assert m, text[-3000:]
        nodes = launch_fleet_nodes(text)
        assert len(nodes) == 2, f"client actors not spread over two Ray nodes: {nodes}\n{text[-3000:]}"
        rows = [json.loads(x) for x in read_container_file(launcher, "/data/runs/systest-ray/metrics.jsonl")
                .splitlines() if x.strip()]
        assert [r["round"] for r in rows] == [0, 1, 2], rows
        assert all(r["accepted"] == 4 for r in rows), rows
        # bytes (as in test_launch): 4 updates of numel x 4 bytes up per round plus a header of under
        # 1 KiB each; the model goes down once per client actor (its fleet shares it): 2 x
        numel, _ = _model_size_and_test_count()
        for r in rows:
            assert 4 * 4 * numel <= r["payload_up"] <= 4 * (4 * numel + 1024), r
            assert 2 * 4 * numel <= r["payload_down"] <= 2 * (4 * numel + 1024), r
            assert r["bytes_up"] > r["payload_up"] and r["bytes_down"] > r["payload_down"], r
        log(f"ray profile: server on {m.group(1)[:12]}, client actors on {sorted(nodes)}, "
            f"accuracy {rows[-1]['accuracy']:.3f}, {time.monotonic() - t_up:.0f}s from up to finish")
        record("ray-profile", total_s=round(time.monotonic() - t_up, 1), rounds=3, accuracy=rows[-1]["accuracy"],
               compose=" ".join(stack.compose))
        ok = True
    finally:
        if not ok:
            stack.dump()
        stack.down()


def _model_size_and_test_count() -> tuple[int, int]:
    """Parameters of the compose runs' model (the defaults: digits, MLP) and test-set size."""
    from thinwire.config import RunConfig
    from thinwire.data.datasets import dataset_from_config
    from thinwire.training import build_run_model

    cfg = RunConfig(progress=False).validate()
    ds = dataset_from_config(cfg)
    return build_run_model(cfg, ds)[0].numel(), len(ds.test_data()[1])


def run_entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess:
    """deploy/entrypoint.sh on this machine (the venv's thinwire), as the image runs it."""
    bin_dir = str(Path(sys.executable).parent)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("THINWIRE_")}
    return subprocess.run(["bash", str(REPO / "deploy/entrypoint.sh"), *args], capture_output=True, text=True,
                          timeout=120, env={**clean, "PATH": bin_dir + os.pathsep + clean.get("PATH", ""), **env})


def test_entrypoint_maps_environment_to_flags():
    """THINWIRE_<OPTION> variables become flags of the subcommand; secrets and unknown names do not."""
    res = run_entrypoint("server", "--rounds", "9", "--help",
                         THINWIRE_ROUNDS="7", THINWIRE_LOSS="iid", THINWIRE_LOSS_PROB="0.2",
                         THINWIRE_EMULATE="true", THINWIRE_INSECURE="false", THINWIRE_PROGRESS="false",
                         THINWIRE_CODEC="", THINWIRE_TOKEN="s3cret-token", THINWIRE_NOT_AN_OPTION="1",
                         THINWIRE_VIRTUAL_CLIENTS="4")
    assert res.returncode == 0, res.stderr
    [line] = [x for x in res.stderr.splitlines() if x.startswith("thinwire-entrypoint: thinwire server")]
    argv = line.split()[2:]
    assert argv[:1] == ["server"]
    assert "--loss-prob" in argv and argv[argv.index("--loss-prob") + 1] == "0.2"
    assert "--loss" in argv and "--emulate" in argv and "--no-progress" in argv
    assert "--insecure" not in argv and "--codec" not in argv
    assert "--virtual-clients" not in argv and "--not-an-option" not in argv
    assert "s3cret-token" not in line and "--token" not in argv
    assert argv[-3:] == ["--rounds", "9", "--help"] and "7" not in argv   # ARGS win over the env
    assert "usage: thinwire server" in res.stdout


def test_entrypoint_client_ids_and_bad_values():
    res = run_entrypoint("client", "--help", THINWIRE_SERVER="server:50051", THINWIRE_CLIENT_ID_START="6",
                         THINWIRE_VIRTUAL_CLIENTS="3")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stderr.splitlines() if x.startswith("thinwire-entrypoint: thinwire client"))
    assert "--server server:50051" in line and "--client-id-start 6" in line and "--virtual-clients 3" in line
    bad = run_entrypoint("server", "--help", THINWIRE_EMULATE="maybe")
    assert bad.returncode != 0 and "THINWIRE_EMULATE='maybe': expected true or false" in bad.stderr


def test_entrypoint_per_round_follows_the_fleet_and_resumes_only_a_checkpoint(tmp_path):
    """THINWIRE_CLIENTS=3 aggregates 3 per round unless THINWIRE_PER_ROUND is set; compose's
    THINWIRE_RESUME=true becomes --resume only when the run has a checkpoint (no warning on a fresh
    start) and --force when the run directory holds a run that never checkpointed."""
    env = dict(THINWIRE_CLIENTS="3", THINWIRE_RESUME="true", THINWIRE_NAME="compose",
               THINWIRE_OUT_DIR=str(tmp_path))

    def argv(**more):
        res = run_entrypoint("server", "--help", **{**env, **more})
        assert res.returncode == 0, res.stderr
        line = next(x for x in res.stderr.splitlines() if x.startswith("thinwire-entrypoint: thinwire server"))
        return line.split()[2:], res.stderr

    args, err = argv()
    assert args[args.index("--per-round") + 1] == "3"
    assert "--resume" not in args and "--force" not in args and "WARNING" not in err
    args, _ = argv(THINWIRE_PER_ROUND="2")
    assert args[args.index("--per-round") + 1] == "2"
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "config.json").write_text("{}")
    args, _ = argv()
    assert "--force" in args and "--resume" not in args
    (tmp_path / "compose" / "checkpoint.pt").write_bytes(b"x")
    args, _ = argv()
    assert "--resume" in args and "--force" not in args
