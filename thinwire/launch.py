"""`thinwire launch`: the served run on Ray: the parameter server and the client fleet as actors.

    thinwire launch --clients 20 --per-round 10 --rounds 5                   # local Ray on this machine
    thinwire launch --ray-address auto --client-actors 8 --client-cpus 2 ...  # an existing cluster

The server actor listens on its node's IP; the client actors are placed by a SPREAD placement
group (one bundle of --client-cpus per actor) over the cluster's nodes and talk gRPC to it exactly
like `thinwire client` processes. Unless --insecure, the server actor makes a throwaway CA and
certificate for its own IP and a random token, so the fleet traffic is TLS + token authenticated
with no setup. The same command works on a laptop and on a cluster (thinwire must be installed
on every node).
"""
from __future__ import annotations

import argparse
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from thinwire import config
from thinwire.config import RunConfig, check_float, check_int
from thinwire.errors import ConfigError, UserError
from thinwire.rundir import in_run_dir

log = logging.getLogger("thinwire.launch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from thinwire.server.command import add_serve_arguments

    config.add_arguments(parser, RunConfig, skip=("workers",))
    add_serve_arguments(parser)
    parser.set_defaults(port=0)  # the fleet learns the server's address from the driver: no fixed port needed
    g = parser.add_argument_group("ray")
    g.add_argument("--client-actors", type=int, default=2, help="client fleet actors (default: 2)")
    g.add_argument("--client-cpus", type=float, default=1.0, help="CPUs reserved per client actor (default: 1)")
    g.add_argument("--server-cpus", type=float, default=1.0, help="CPUs reserved for the server actor (default: 1)")
    g.add_argument("--server-host", default="node-ip",
                   help="address the server actor listens on: node-ip (default) or an explicit address")
    g.add_argument("--insecure", action="store_true", help="plaintext gRPC without the generated TLS and token")
    g.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default: 3600)")


class ServerActor:
    """Wraps ServerHandle; methods run in the actor's process on some node."""

    def __init__(self, cfg_dict: dict[str, Any], opts_dict: dict[str, Any], resume: bool, secure: bool,
                 host: str) -> None:
        import ray
        import torch

        from thinwire.config import build
        from thinwire.wire.security import Authenticator, AuthInterceptor, ServerSecurity
        from thinwire.server.app import ParameterServer, ServeOptions
        from thinwire.server.service import ServerHandle

        torch.set_num_threads(1)
        logging.basicConfig(level=logging.WARNING)
        from thinwire.logs import setup_from_env
        setup_from_env()  # the driver's -v / -vv
        self.ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        cfg = build(RunConfig, cfg_dict)
        opts = ServeOptions(**{**opts_dict, "host": self.ip if host == "node-ip" else host})
        self.ca_pem = b""
        self.token = ""
        creds, auth = None, Authenticator()
        if secure:
            import grpc

            from thinwire.wire import certs
            ca, ca_key = certs.make_ca(days=7)
            cert, key = certs.make_leaf(ca, ca_key, opts.host, sorted({opts.host, self.ip}), server=True, days=7)
            creds = grpc.ssl_server_credentials([(certs.pem_key(key), certs.pem_cert(cert))])
            self.ca_pem = certs.pem_cert(ca)
            self.token = secrets.token_urlsafe(24)
            auth = Authenticator(shared=self.token)
        self.host = opts.host
        self.ps = ParameterServer(cfg, opts, resume=resume)
        self.error = ""
        try:
            self.handle = ServerHandle(self.ps, ServerSecurity(creds, auth, [AuthInterceptor(auth)] if auth.enabled
                                                               else []))
        except UserError as e:  # e.g. the port is taken: the driver reports it as one line
            self.error = str(e)

    def address(self) -> dict[str, Any]:
        if self.error:
            return {"error": self.error}
        return {"target": f"{self.host}:{self.handle.port}", "ca_pem": self.ca_pem, "token": self.token,
                "node_id": self.node_id, "ip": self.ip}

    def status(self) -> dict[str, Any]:
        return self.ps.status()

    def wait(self, linger: float) -> dict[str, Any]:
        self.handle.thread.join()
        t_end = time.monotonic() + linger
        while time.monotonic() < t_end and self.ps.members.alive():
            time.sleep(0.1)
        self.handle.stop()
        rows = [json.loads(x) for x in (self.ps.run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return {"status": self.ps.status(), "metrics": rows, "history": self.ps.history, "node_id": self.node_id,
                "run_dir": str(self.ps.run_dir)}


class FleetActor:
    """A `thinwire client` fleet inside a Ray actor."""

    def run(self, target: str, ids: list[int], ca_pem: bytes, token: str, parallel: int) -> dict[str, Any]:
        import ray
        import grpc

        from thinwire.client.fleet import FleetOptions, run_fleet
        from thinwire.wire.security import ClientSecurity

        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem) if ca_pem else None
        sec = ClientSecurity(creds, None, token or None)
        res = run_fleet(FleetOptions(server=target, client_ids=ids, parallel=parallel, max_wait=120.0), sec)
        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "ids": ids, "accepted": res.accepted, "late": res.late, "refused": res.refused,
                "bytes_up": res.bytes_up.get("wire_bytes", 0), "bytes_down": res.bytes_down.get("wire_bytes", 0),
                "finished": res.finished}


def split_ids(n_clients: int, n_actors: int) -> list[list[int]]:
    n_actors = max(1, min(n_actors, n_clients))
    base, extra = divmod(n_clients, n_actors)
    out, start = [], 0
    for i in range(n_actors):
        k = base + (1 if i < extra else 0)
        out.append(list(range(start, start + k)))
        start += k
    return out


def launch(cfg: RunConfig, opts, *, ray_address: str = "", client_actors: int = 2, client_cpus: float = 1.0,
           server_cpus: float = 1.0, server_host: str = "node-ip", secure: bool = True, resume: bool = False,
           timeout: float = 3600.0) -> dict[str, Any]:
    import dataclasses

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    import os

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")   # CPU actors: silence Ray's GPU env tip
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                                  configure_logging=False)
        try:
            ray.init(address=ray_address or "local", **kw)   # no address: a fresh local Ray
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"ray_address: cannot attach to Ray at {ray_address!r} ({str(e).splitlines()[0]})") from None
        started = True
    pg = None
    try:
        groups = split_ids(cfg.clients, client_actors)
        need = server_cpus + client_cpus * len(groups)
        have = ray.cluster_resources().get("CPU", 0)
        if need > have + 1e-9:
            raise UserError(f"client_cpus: {len(groups)} client actors x {client_cpus} CPU + server {server_cpus} CPU "
                            f"= {need:g} CPUs, the Ray cluster has {have:g}; lower --client-cpus or --client-actors")
        server = ray.remote(num_cpus=server_cpus)(ServerActor).remote(
            config.to_dict(cfg), dataclasses.asdict(opts), resume, secure, server_host)
        addr = ray.get(server.address.remote(), timeout=300)
        if "error" in addr:
            raise UserError(addr["error"])
        pg = placement_group([{"CPU": client_cpus} for _ in groups], strategy="SPREAD")
        ray.get(pg.ready(), timeout=300)
        fleet_cls = ray.remote(num_cpus=client_cpus)(FleetActor)
        actors = [fleet_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=i)).remote() for i in range(len(groups))]
        runs = [a.run.remote(addr["target"], ids, addr["ca_pem"], addr["token"], 1) for a, ids in zip(actors, groups)]
        done_ref = server.wait.remote(opts.linger)
        bar = None
        if cfg.progress:
            from tqdm import tqdm
            print(f"thinwire launch: server on node {addr['node_id'][:12]} at {addr['target']} "
                  f"({'tls+token' if secure else 'insecure'}); {len(groups)} client actors", flush=True)
            bar = tqdm(total=cfg.rounds, desc=f"launch {cfg.name}", unit="round", dynamic_ncols=True)
        t_end = time.monotonic() + timeout
        while True:
            ready, _ = ray.wait([done_ref], timeout=1.0)
            if ready:
                break
            if bar is not None:
                try:
                    st = ray.get(server.status.remote(), timeout=10)
                except Exception:
                    st = None
                if st is not None and st["model_version"] > bar.n:  # redraw only on progress
                    bar.set_postfix(acc=f"{st['accuracy']:.3f}", alive=st["clients_alive"], refresh=False)
                    bar.update(st["model_version"] - bar.n)
            if time.monotonic() > t_end:
                raise UserError(f"timeout: run not finished after {timeout:g} s")
        result = ray.get(done_ref)
        if bar is not None:  # the final state is drawn once, by close()
            st = result["status"]
            bar.n = st["model_version"]
            bar.set_postfix(acc=f"{st['accuracy']:.3f}", alive=st["clients_alive"], refresh=False)
            bar.close()
        fleets = ray.get(runs, timeout=300)
        result["fleets"] = fleets
        result["server_node"] = addr["node_id"]
        result["server_target"] = addr["target"]
        return result
    finally:
        if pg is not None:
            remove_placement_group(pg)
        if started:
            ray.shutdown()


def results_text(result: dict[str, Any]) -> str:
    from thinwire.metrics import format_table, human_bytes

    lines = [f"server actor: node {result['server_node']} at {result['server_target']}"]
    lines.append(format_table(["client actor", "node", "ip", "clients", "accepted", "late", "sent", "received"],
                              [(i, f["node_id"][:16], f["ip"], f"{f['ids'][0]}..{f['ids'][-1]}", f["accepted"],
                                f["late"], human_bytes(f["bytes_up"]), human_bytes(f["bytes_down"]))
                               for i, f in enumerate(result["fleets"])]))
    lines.append("")
    lines.append(format_table(["round", "accepted", "accuracy", "loss", "bytes_up", "bytes_down", "round_time_s"],
                              [(r["round"], r["accepted"], r.get("accuracy", float("nan")),
                                r.get("loss", float("nan")), human_bytes(r["bytes_up"]), human_bytes(r["bytes_down"]),
                                r["round_time"]) for r in result["metrics"]]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from thinwire.server.command import serve_options

    cfg = config.from_args(RunConfig, args)
    cfg = in_run_dir(cfg, "launch", resume=args.resume, force=args.force)
    opts = serve_options(args)
    check_int("client_actors", args.client_actors, 1)
    check_float("client_cpus", args.client_cpus, 0.0, lo_open=True)
    check_float("server_cpus", args.server_cpus, 0.0, lo_open=True)
    check_float("timeout", args.timeout, 0.0, lo_open=True)
    if args.server_host != "node-ip" and not args.server_host:
        raise ConfigError("server_host", "empty address", "node-ip or an IP address")
    result = launch(cfg, opts, ray_address=cfg.ray_address, client_actors=args.client_actors,
                    client_cpus=args.client_cpus, server_cpus=args.server_cpus, server_host=args.server_host,
                    secure=not args.insecure, resume=args.resume, timeout=args.timeout)
    print()
    print(results_text(result))
    local = Path(cfg.run_dir) / "metrics.jsonl"
    if not local.exists():                 # the server ran on another node: keep a copy here
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("".join(json.dumps(r) + "\n" for r in result["metrics"]))
    print(f"\nmetrics: {local}")
    return 0 if result["status"]["finished"] else 1
