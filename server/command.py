"""`thinwire server`: the gRPC parameter server for a served run (clients connect with `thinwire client`).

    thinwire server --insecure --port 50051 --clients 3 --per-round 3 --rounds 5 --name demo
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from thinwire import config
from thinwire.config import RunConfig, check_float, check_int
from thinwire.errors import ConfigError
from thinwire.rundir import in_run_dir
from thinwire.wire.security import add_tls_arguments, server_security

from thinwire.server.app import ServeOptions

log = logging.getLogger("thinwire.server")
SERVER_ONLY_SKIP = ("workers", "ray_address")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("serving")
    d = ServeOptions()
    g.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s; 0.0.0.0 for all)")
    g.add_argument("--port", type=int, default=d.port, help="port (0 = any free port; see --port-file)")
    g.add_argument("--port-file", metavar="FILE", help="write the bound port to FILE once serving")
    g.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval, help="seconds between client heartbeats")
    g.add_argument("--heartbeat-timeout", type=float, default=d.heartbeat_timeout,
                   help="a client silent this long is considered gone (default: %(default)s)")
    g.add_argument("--join-wait", type=float, default=d.join_wait,
                   help="seconds to wait for enough live clients before selecting those present")
    g.add_argument("--max-update-mb", type=float, default=0.0, help="encoded update size limit (0 = the strategy's bound, e.g. ntk's Jacobian size, else 4x model + 1 MiB)")
    g.add_argument("--buffer-mb", type=float, default=0.0,
                   help="memory for reassembling pushes in flight (0 = max(32 MiB, 2 fp32 pushes))")
    g.add_argument("--emulate", action="store_true",
                   help="apply the run's fault model (bandwidth, latency, stragglers, chunk loss) on every client link")
    g.add_argument("--time-scale", type=float, default=d.time_scale,
                   help="multiply emulated delays and the round deadline (e.g. 0.01 for fast tests)")
    g.add_argument("--threads", type=int, default=d.threads, help="gRPC handler threads")
    g.add_argument("--linger", type=float, default=d.linger, help="seconds to keep serving FINISHED after the last round")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite the run directory --name if it holds a run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, RunConfig, skip=SERVER_ONLY_SKIP)
    add_serve_arguments(parser)
    add_tls_arguments(parser, server=True)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    check_int("port", args.port, 0, 65535)
    check_float("heartbeat_interval", args.heartbeat_interval, 0.0, lo_open=True)
    check_float("heartbeat_timeout", args.heartbeat_timeout, 0.0, lo_open=True)
    if args.heartbeat_timeout <= args.heartbeat_interval:
        raise ConfigError("heartbeat_timeout", f"{args.heartbeat_timeout} must exceed --heartbeat-interval "
                          f"{args.heartbeat_interval}", "a few heartbeat intervals")
    check_float("join_wait", args.join_wait, 0.0)
    check_float("max_update_mb", args.max_update_mb, 0.0)
    check_float("buffer_mb", args.buffer_mb, 0.0)
    check_float("time_scale", args.time_scale, 0.0, lo_open=True)
    check_int("threads", args.threads, 4, 1024)
    check_float("linger", args.linger, 0.0)
    return ServeOptions(host=args.host, port=args.port, heartbeat_interval=args.heartbeat_interval,
                        heartbeat_timeout=args.heartbeat_timeout, join_wait=args.join_wait,
                        max_update_bytes=int(args.max_update_mb * (1 << 20)),
                        buffer_budget=int(args.buffer_mb * (1 << 20)), emulate=args.emulate,
                        time_scale=args.time_scale, threads=args.threads, linger=args.linger)


def serve(cfg: RunConfig, opts: ServeOptions, security, *, resume: bool = False, port_file: str | None = None,
          ready: threading.Event | None = None, on_port=None) -> dict:
    """Run a served federated run to completion; returns the final status."""
    from thinwire.server.app import ParameterServer
    from thinwire.server.service import start_grpc

    if cfg.loss != "none" and not opts.emulate:
        log.warning("loss model %r configured but --emulate is off: only the real network loses packets", cfg.loss)
    ps = ParameterServer(cfg, opts, resume=resume)
    if ps.engine.resumed_from is not None and cfg.progress:
        print(f"thinwire server: resumed {ps.run_dir} from round {ps.engine.resumed_from}", flush=True)
    server, port = start_grpc(ps, security)
    if port_file:
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.replace(port_file + ".tmp", port_file)
    if on_port is not None:
        on_port(port)
    if ready is not None:
        ready.set()
    if cfg.progress:
        print(f"thinwire server: run {cfg.name!r} listening on {opts.host}:{port} ({security.scheme}); "
              f"waiting for {ps.policy.n_select} clients", flush=True)
    stop = threading.Event()

    def on_signal(signum, frame):  # graceful stop on Ctrl-C / SIGTERM: the last checkpoint stands
        stop.set()
        ps.stop_event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        ps.run_rounds(progress=cfg.progress)
        if ps.finished:
            t_end = time.monotonic() + opts.linger
            while time.monotonic() < t_end and not stop.is_set() and ps.members.alive():
                time.sleep(0.1)
    finally:
        server.stop(grace=1.0).wait(5)
    st = ps.status()
    st["port"] = port
    st["run_dir"] = str(ps.run_dir)
    st["history"] = ps.history
    return st


def run(args: argparse.Namespace) -> int:
    from thinwire.rundir import make_dir

    cfg = config.from_args(RunConfig, args)
    cfg = in_run_dir(cfg, "server", resume=args.resume, force=args.force)
    opts = serve_options(args)
    security = server_security(args)
    make_dir("out_dir", cfg.run_dir)
    st = serve(cfg, opts, security, resume=args.resume, port_file=args.port_file)
    from thinwire.metrics import read_metrics
    from thinwire.server.rounds import results_table, summarize
    rows = read_metrics(cfg.run_dir)
    if rows:
        print()
        print(results_table(summarize(rows), clock="wall", time_scale=opts.time_scale))
    print(f"\nrun {st['phase']}: {st['model_version']}/{st['rounds_total']} rounds; metrics: {cfg.run_dir / 'metrics.jsonl'}")
    return 0 if st["finished"] else 1
