"""`thinwire bench soak`: a long served run on loopback; does the server's memory grow with rounds,
and what do the control plane's idle clients cost?

One `ParameterServer` process (checkpointing every round, as a served run does) and `--processes`
client processes hosting `--clients` virtual clients between them (real `Fleet`s: batched
heartbeats and task polls, real training on the FedProx synthetic data, pushes). `--per-round`
clients train each round; the others are idle but alive (they heartbeat and poll). At every round
close the bench samples the server's RSS and CPU time from outside. Reported: the RSS slope per
round (least-squares line over the rounds after `--warmup`), server CPU seconds per round (mean
over the rounds after `--warmup`) and per wall second, p50/p99 push latency over every push of
every client process, and the client summaries. The full size (1,000 x 200) is the default.

`--control-cost` measures instead the server CPU of one control-plane call: N per-client
Heartbeat RPCs (the protocol before batching) against HeartbeatMany + GetTasks calls of 1,000 ids.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1000, help="virtual clients in all (default: 1000)")
    parser.add_argument("--rounds", type=int, default=200, help="rounds (default: 200)")
    parser.add_argument("--per-round", type=int, default=10, help="clients trained per round (default: 10)")
    parser.add_argument("--processes", type=int, default=10, help="client processes (default: 10)")
    parser.add_argument("--warmup", type=int, default=10, help="rounds left out of the RSS fit (default: 10)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval in s (default: 1)")
    parser.add_argument("--control-cost", action="store_true",
                        help="measure server CPU per heartbeat: one RPC per client vs one call for 1,000 ids")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--serve", choices=("server", "fleet"), help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


def soak_config(args):
    from thinwire.config import RunConfig

    return RunConfig(name="soak", out_dir=args.out_dir, dataset="synthetic", model="logreg", clients=args.clients,
                     per_round=args.per_round, rounds=args.rounds, eval_every=args.rounds, progress=False,
                     local_epochs=1, server_momentum=0.0).validate()


# -- the processes --------------------------------------------------------------------------------
def _serve_server(args) -> None:
    import torch

    from thinwire.wire.security import Authenticator, ServerSecurity
    from thinwire.server.app import ParameterServer, ServeOptions
    from thinwire.server.service import ServerHandle

    torch.set_num_threads(1)
    opts = ServeOptions(host="127.0.0.1", port=0, heartbeat_interval=args.heartbeat,
                        heartbeat_timeout=max(30.0, 10 * args.heartbeat), join_wait=600, linger=3.0, threads=32)
    h = ServerHandle(ParameterServer(soak_config(args), opts), ServerSecurity(None, Authenticator(), []))
    Path(args.port_file).write_text(str(h.port))
    h.wait()
    time.sleep(opts.linger)                    # clients learn FINISHED
    h.stop()


def _serve_fleet(args) -> None:
    from thinwire.client.fleet import FleetOptions, run_fleet
    from thinwire.wire.security import ClientSecurity

    ids = list(range(args.start, args.start + args.count))
    res = run_fleet(FleetOptions(server=args.server, client_ids=ids, parallel=2, max_wait=120.0, progress=False),
                    ClientSecurity(None))
    Path(args.out).write_text(json.dumps({"push_seconds": res.push_seconds, "summary": res.summary(),
                                          "finished": res.finished}))


# -- the driver -----------------------------------------------------------------------------------
def _fit_slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def soak(args) -> dict[str, Any]:
    import psutil

    tmp = Path(tempfile.mkdtemp(prefix="tw-soak-"))
    me = [sys.executable, "-m", "thinwire.cli", "bench", "soak", "--clients", str(args.clients),
          "--rounds", str(args.rounds), "--per-round", str(args.per_round), "--heartbeat", str(args.heartbeat)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    srv = subprocess.Popen(me + ["--serve", "server", "--port-file", str(tmp / "port"), "--out-dir", str(tmp)],
                           env=env, stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT)
    procs = [srv]
    try:
        t_end = time.monotonic() + 120
        while not (tmp / "port").exists() or not (tmp / "port").read_text():
            if srv.poll() is not None or time.monotonic() > t_end:
                raise RuntimeError(f"soak server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        addr = f"127.0.0.1:{(tmp / 'port').read_text()}"
        per = -(-args.clients // args.processes)
        outs = []
        for i, start in enumerate(range(0, args.clients, per)):
            out = tmp / f"fleet{i}.json"
            outs.append(out)
            procs.append(subprocess.Popen(me + ["--serve", "fleet", "--server", addr, "--start", str(start), "--count",
                                                str(min(per, args.clients - start)), "--out", str(out)],
                                          env=env, stdout=open(tmp / f"fleet{i}.log", "w"), stderr=subprocess.STDOUT))
        sp = psutil.Process(srv.pid)
        metrics = tmp / "soak" / "metrics.jsonl"
        samples: list[tuple[int, float, int, float]] = []   # (rounds closed, server CPU s, RSS bytes, wall s)
        bar = tqdm(total=args.rounds, desc="bench soak", unit="round", dynamic_ncols=True)
        seen = 0
        while srv.poll() is None:
            n = _rows(metrics)
            if n > seen:
                try:
                    cpu = sp.cpu_times()
                    samples.append((n, cpu.user + cpu.system, sp.memory_info().rss, time.monotonic()))
                except psutil.NoSuchProcess:
                    break
                bar.update(n - seen)
                seen = n
            time.sleep(0.02)
        bar.close()
        fleets = []
        for p, out in zip(procs[1:], outs):
            p.wait(120)
            fleets.append(json.loads(out.read_text()) if out.exists() else {"push_seconds": [], "summary": "no result"})
        if srv.returncode != 0:
            raise RuntimeError(f"soak server exited {srv.returncode}: {(tmp / 'server.log').read_text()[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    fit = [(r, rss) for r, _, rss, _ in samples if r > args.warmup]
    # CPU time has a 10 ms tick: averaged over all rounds after the warm-up, not per round.
    steady = [s for s in samples if s[0] >= args.warmup]
    cpu_round = cpu_sec = float("nan")
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        (r0, c0, _, w0), (r1, c1, _, w1) = steady[0], steady[-1]
        cpu_round, cpu_sec = (c1 - c0) / (r1 - r0), (c1 - c0) / max(w1 - w0, 1e-9)
        round_s = (w1 - w0) / (r1 - r0)
    pushes = [s for f in fleets for s in f["push_seconds"]]
    return {
        "clients": args.clients, "rounds": args.rounds, "per_round": args.per_round, "processes": len(fleets),
        "rounds_sampled": len(samples), "rss_first_mb": samples[0][2] / 1e6 if samples else None,
        "rss_last_mb": samples[-1][2] / 1e6 if samples else None,
        "rss_slope_kb_per_round": _fit_slope([r for r, _ in fit], [b for _, b in fit]) / 1e3 if fit else None,
        "server_cpu_s_per_round": cpu_round, "server_cpu_s_per_wall_s": cpu_sec,
        "round_wall_s": round_s if len(steady) >= 2 else float("nan"),
        "pushes": len(pushes), "push_p50_s": _pct(pushes, 0.5), "push_p99_s": _pct(pushes, 0.99),
        "fleets": [f["summary"] for f in fleets], "run_dir": str(tmp),
    }


def control_cost(calls: int = 3000, batches: int = 60, ids: int = 1000) -> dict[str, float]:
    """Server CPU per per-client Heartbeat RPC and per id of a batched call, on an idle server
    (fewer clients joined than a round needs, so no round opens)."""
    import psutil

    from thinwire.client.grpc_client import Backoff, Connection
    from thinwire.collective.group import free_port
    from thinwire.wire.security import ClientSecurity

    tmp = Path(tempfile.mkdtemp(prefix="tw-control-"))
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "thinwire.cli", "server", "--insecure", "--port", str(port),
                            "--out-dir", str(tmp), "--no-progress", "--clients", str(ids), "--per-round", "10",
                            "--rounds", "1", "--dataset", "synthetic", "--model", "logreg", "--join-wait", "600",
                            "--heartbeat-timeout", "600"], stdout=open(tmp / "server.log", "w"),
                           stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    conn = Connection(f"127.0.0.1:{port}", ClientSecurity(None), backoff=Backoff(max_wait=120))
    try:
        for cid in range(9):
            conn.join(cid)
        sp = psutil.Process(srv.pid)

        def cpu() -> float:
            t = sp.cpu_times()
            return t.user + t.system
        for _ in range(200):                   # warm
            conn.heartbeat(0)
        c0 = cpu()
        for i in range(calls):
            conn.heartbeat(i % 9)
        per_rpc = (cpu() - c0) / calls
        everyone = list(range(ids))
        c0 = cpu()
        for _ in range(batches):
            conn.heartbeat_many([(c, -1) for c in everyone])
            conn.get_tasks(everyone)
        per_id = (cpu() - c0) / (2 * batches * ids)
    finally:
        conn.close()
        srv.kill()
    return {"heartbeat_rpc_us": per_rpc * 1e6, "batched_us_per_id": per_id * 1e6}


def run(args) -> int:
    if args.serve == "server":
        _serve_server(args)
        return 0
    if args.serve == "fleet":
        _serve_fleet(args)
        return 0
    if args.control_cost:
        c = control_cost()
        print(f"server CPU per Heartbeat RPC: {c['heartbeat_rpc_us']:.0f} us; per client id in a HeartbeatMany / "
              f"GetTasks call of 1,000 ids: {c['batched_us_per_id']:.2f} us")
        if args.json:
            Path(args.json).write_text(json.dumps(c, indent=1))
        return 0
    from thinwire.config import check_int
    check_int("clients", args.clients, 1)
    check_int("rounds", args.rounds, 1)
    check_int("per_round", args.per_round, 1, args.clients)
    check_int("processes", args.processes, 1, args.clients)
    r = soak(args)
    print(f"soak: {r['clients']} clients in {r['processes']} processes x {r['rounds']} rounds ({r['per_round']} "
          f"trained per round)\n"
          f"  server RSS {r['rss_first_mb']:.0f} -> {r['rss_last_mb']:.0f} MB, slope "
          f"{r['rss_slope_kb_per_round']:.1f} kB/round over rounds > {args.warmup}\n"
          f"  server CPU {r['server_cpu_s_per_round']:.3f} s/round, {r['server_cpu_s_per_wall_s']:.3f} s/s "
          f"({r['round_wall_s']:.2f} s/round)\n"
          f"  {r['pushes']} pushes: p50 {r['push_p50_s'] * 1e3:.1f} ms, p99 {r['push_p99_s'] * 1e3:.1f} ms")
    for i, s in enumerate(r["fleets"]):
        print(f"  client process {i}: {s}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0
