"""`thinwire bench wire`: how fast one thinwire server ingests updates, vs a raw gRPC byte stream.

For each (clients, update size): a real `ParameterServer` in its own process takes rounds of
pushes (identity-coded fp32 updates, checked and folded into FedAvg as they complete) from N
concurrent client streams on loopback; round 0 warms the server (buffers, accumulator), the next
`--rounds` are measured (push time only, not the turnaround between rounds). The same bytes in
the same chunks and streams, `--rounds` batches of N pushes, are then sent to a bare gRPC method
that only counts them, after warming its streams: the reference. Reported: aggregate MB/s and
its ratio to the reference, p50/p99 push latency, server RSS (idle before round 0, peak over all
rounds, growth) against the model size, bytes on the TCP socket (kernel TCP_INFO) per encoded
payload byte, and the CPU seconds the server and the clients used in each measured phase.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

MB = 1_000_000
RAW_METHOD = "/thinwire.bench.Raw/Push"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="10,100", help="comma-separated client counts (default: 10,100)")
    parser.add_argument("--sizes-mb", default="1,25", help="comma-separated update sizes in MB (default: 1,25)")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="chunk size in KiB (default: 1024)")
    parser.add_argument("--streams", type=int, default=0,
                        help="concurrent push streams (0 = one per client, capped by --max-streams)")
    parser.add_argument("--max-streams", type=int, default=100, help="cap on concurrent streams (default: 100)")
    parser.add_argument("--connections", type=int, default=8, help="TCP connections the streams share (default: 8)")
    parser.add_argument("--buffer-mb", type=float, default=0.0, help="server reassembly budget (0 = server default)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per case, after one warm-up round")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate thinwire and raw runs this many times per case, keep the best of each")
    parser.add_argument("--body-digest", action="store_true",
                        help="pushes also carry the body's sha256, verified by the server (default: crc32 list only)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--serve", choices=("thinwire", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--numel", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default="", help=argparse.SUPPRESS)


# -- server processes -----------------------------------------------------------------------------
def _serve_thinwire(args) -> None:
    import torch

    from thinwire.config import RunConfig
    from thinwire.wire.security import Authenticator, ServerSecurity
    from thinwire.server.app import ParameterServer, ServeOptions
    from thinwire.server.service import ServerHandle

    n = int(args.clients)
    torch.set_num_threads(1)
    cfg = RunConfig(name="bench-wire", out_dir=args.out_dir, clients=n, per_round=n, rounds=1 + args.rounds,
                    progress=False,
                    chunk_size=args.chunk_kb * 1024).validate()
    update = 4 * args.numel + (1 << 16)
    opts = ServeOptions(host="127.0.0.1", port=0, heartbeat_timeout=600, join_wait=600, checkpoint=False,
                        max_update_bytes=update, buffer_budget=int(args.buffer_mb * (1 << 20)), threads=128,
                        push_wait=600, linger=0)
    ps = ParameterServer(cfg, opts, init_vec=torch.zeros(args.numel))
    h = ServerHandle(ps, ServerSecurity(None, Authenticator(), []))
    Path(args.port_file).write_text(str(h.port))
    h.wait()
    time.sleep(2.0)                              # let the bench read final counters
    h.stop()


def _serve_raw(args) -> None:
    import grpc

    def push(it, context):
        n = 0
        for m in it:
            n += len(m)
        return struct.pack("<Q", n)

    handler = grpc.method_handlers_generic_handler("thinwire.bench.Raw", {
        "Push": grpc.stream_unary_rpc_method_handler(push, request_deserializer=None, response_serializer=None)})
    from thinwire.wire.format import server_options
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128), options=server_options(args.chunk_kb * 1024))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(args.port_file).write_text(str(port))
    server.wait_for_termination(timeout=3600)


# -- measurement helpers --------------------------------------------------------------------------
def _tcp_bytes(port: int) -> tuple[int, int]:
    """(bytes acked, bytes received) summed over this process's TCP sockets to 127.0.0.1:port, from
    the kernel's TCP_INFO: what really crossed the socket, HTTP/2 framing included."""
    acked = recv = 0
    for fd_name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd_name}").startswith("socket:"):
                continue
            dup = os.dup(int(fd_name))
        except OSError:
            continue
        try:
            s = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        try:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            if s.getpeername()[1] != port:
                continue
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            a, r = struct.unpack_from("<QQ", info, 120)
            acked += a
            recv += r
        except OSError:
            pass
        finally:
            s.close()
    return acked, recv


class RssSampler:
    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except Exception:
                return
            self._stop.wait(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _start(kind: str, args, n: int, numel: int, tmp: Path) -> tuple[subprocess.Popen, int]:
    pf = tmp / f"{kind}-{n}-{numel}.port"
    if pf.exists():
        pf.unlink()
    cmd = [sys.executable, "-m", "thinwire.bench.wire", "--serve", kind, "--clients", str(n), "--numel", str(numel),
           "--chunk-kb", str(args.chunk_kb), "--port-file", str(pf), "--out-dir", str(tmp),
           "--buffer-mb", str(args.buffer_mb), "--rounds", str(args.rounds)]
    p = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    t_end = time.monotonic() + 120
    while not pf.exists():
        if p.poll() is not None or time.monotonic() > t_end:
            p.kill()
            raise RuntimeError(f"bench {kind} server did not start")
        time.sleep(0.05)
    time.sleep(0.05)
    return p, int(pf.read_text())


def _cpu(server, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds used by the server process and by this (client) process, since `since`."""
    s, c = server.cpu_times(), os.times()
    now = {"server_cpu": s.user + s.system, "client_cpu": c.user + c.system}
    return {k: v - since[k] for k, v in now.items()} if since else now


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _run_pushes(n: int, streams: int, fn) -> tuple[float, list[float]]:
    lat: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t = time.perf_counter()
        fn(i)
        with lock:
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(max_workers=streams) as ex:
        for f in [ex.submit(one, i) for i in range(n)]:
            f.result()
    return time.perf_counter() - t0, lat


def _thinwire_phase(args, n, numel, streams, ncon, chunk, enc, payload, tmp) -> dict[str, Any]:
    from thinwire.client.grpc_client import Backoff, Connection
    from thinwire.protos import thinwire_pb2 as pb2
    from thinwire.wire.security import ClientSecurity
    from thinwire.wire.link import Link

    proc, port = _start("thinwire", args, n, numel, tmp)
    try:
        sampler = RssSampler(proc.pid)
        target = f"127.0.0.1:{port}"
        conns = [Connection(target, ClientSecurity(None), chunk_size=chunk, backoff=Backoff(max_wait=60),
                            rpc_timeout=600, extra_options=[("grpc.use_local_subchannel_pool", 1)],
                            body_digest=args.body_digest)
                 for _ in range(ncon)]
        for cid in range(n):
            conns[cid % ncon].join(cid)

        def tasks_for(rnd: int) -> dict[int, Any]:
            tasks: dict[int, Any] = {}
            t_end = time.monotonic() + 120
            while len(tasks) < n:
                if time.monotonic() > t_end:
                    raise RuntimeError(f"bench server did not open round {rnd} for all clients")
                for cid in range(n):
                    if cid not in tasks:
                        r = conns[cid % ncon].get_task(cid)
                        if r.action == pb2.TaskReply.TRAIN and r.round == rnd:
                            tasks[cid] = r
                time.sleep(0.01)
            return tasks

        def pushes(tasks: dict[int, Any]) -> tuple[float, list[float]]:
            def push(cid: int) -> None:
                t = tasks[cid]
                r = conns[cid % ncon].push(client_id=cid, rnd=t.round, model_version=t.model_version, payload=payload,
                                           header_size=enc.header_size, num_samples=1, train_loss=0.0,
                                           link=Link(None, cid), chunk_size=chunk)
                if r.result != pb2.PushReply.ACCEPTED:
                    raise RuntimeError(f"push of client {cid}: {r.message}")
            return _run_pushes(n, streams, push)

        warm = tasks_for(0)
        time.sleep(0.3)
        idle_rss = sampler.rss()
        elapsed, lat, socket_bytes, cpu = 0.0, [], 0, {"server_cpu": 0.0, "client_cpu": 0.0}
        with sampler:
            pushes(warm)                  # round 0 warms the server, as the raw phase warms its streams
            grpc0 = sum(c.up.wire_bytes for c in conns)
            for rnd in range(1, 1 + args.rounds):
                tasks = tasks_for(rnd)
                acked0 = _tcp_bytes(port)[0]
                cpu0 = _cpu(sampler.proc)
                dt, lat_r = pushes(tasks)
                for k, v in _cpu(sampler.proc, cpu0).items():
                    cpu[k] += v
                socket_bytes += _tcp_bytes(port)[0] - acked0
                elapsed += dt
                lat += lat_r
        grpc_bytes = sum(c.up.wire_bytes for c in conns) - grpc0
        for c in conns:
            c.close()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"elapsed": elapsed, "lat": lat, "idle_rss": idle_rss, "peak_rss": sampler.peak,
            "socket_bytes": socket_bytes, "grpc_bytes": grpc_bytes, **cpu}


def _raw_phase(args, n, numel, streams, ncon, chunk, payload, tmp) -> dict[str, Any]:
    import grpc

    from thinwire.wire.format import channel_options, split

    rproc, rport = _start("raw", args, n, numel, tmp)
    try:
        chans = [grpc.insecure_channel(f"127.0.0.1:{rport}", options=channel_options(chunk) +
                                       [("grpc.use_local_subchannel_pool", 1)]) for _ in range(ncon)]
        calls = [ch.stream_unary(RAW_METHOD, request_serializer=None, response_deserializer=None) for ch in chans]
        ranges = split(len(payload), chunk)
        view = memoryview(payload)

        def raw(i: int) -> None:
            calls[i % ncon](iter(bytes(view[a:b]) for a, b in ranges), timeout=600)

        _run_pushes(min(n, 4), min(streams, 4), raw)        # warm the connections
        import psutil

        cpu0 = _cpu(psutil.Process(rproc.pid))
        elapsed, lat = 0.0, []
        for _ in range(args.rounds):       # the same batches of n concurrent pushes as the rounds
            dt, lat_r = _run_pushes(n, streams, raw)
            elapsed += dt
            lat += lat_r
        cpu = _cpu(psutil.Process(rproc.pid), cpu0)
        for ch in chans:
            ch.close()
    finally:
        rproc.kill()
        rproc.wait(10)
    return {"elapsed": elapsed, "lat": lat, **cpu}


def bench_case(args, n: int, size_mb: float, tmp: Path) -> dict[str, Any]:
    """One (clients, size) case: thinwire and raw phases alternated `--repeat` times, best of each."""
    import torch

    from thinwire import compression

    numel = int(size_mb * MB / 4)
    chunk = args.chunk_kb * 1024
    streams = min(args.streams or n, args.max_streams, n)
    enc = compression.get("identity").encode(torch.randn(numel, generator=torch.Generator().manual_seed(0)))
    payload = enc.to_bytes()
    total_payload = n * len(payload) * args.rounds
    ncon = max(1, min(args.connections, streams))
    tw_runs, raw_runs = [], []
    for _ in range(args.repeat):
        tw_runs.append(_thinwire_phase(args, n, numel, streams, ncon, chunk, enc, payload, tmp))
        raw_runs.append(_raw_phase(args, n, numel, streams, ncon, chunk, payload, tmp))
    tw = min(tw_runs, key=lambda r: r["elapsed"])
    raw = min(raw_runs, key=lambda r: r["elapsed"])
    peak = max(r["peak_rss"] for r in tw_runs)
    idle = min(r["idle_rss"] for r in tw_runs)
    growth = max(r["peak_rss"] - r["idle_rss"] for r in tw_runs)
    model_bytes = 4 * numel
    return {
        "clients": n, "update_mb": size_mb, "streams": streams, "connections": ncon, "chunk_kib": args.chunk_kb,
        "rounds": args.rounds, "repeat": args.repeat, "payload_bytes": len(payload),
        "ingest_mb_s": total_payload / tw["elapsed"] / MB, "raw_mb_s": total_payload / raw["elapsed"] / MB,
        "ratio": raw["elapsed"] / tw["elapsed"],
        "p50_s": _pct(tw["lat"], 0.5), "p99_s": _pct(tw["lat"], 0.99), "raw_p50_s": _pct(raw["lat"], 0.5),
        "raw_p99_s": _pct(raw["lat"], 0.99),
        "rss_idle_mb": idle / MB, "rss_peak_mb": peak / MB, "rss_growth_mb": growth / MB,
        "rss_goal_mb": (2 * model_bytes + 100 * MB) / MB,
        "server_cpu_s": tw["server_cpu"], "client_cpu_s": tw["client_cpu"],
        "raw_server_cpu_s": raw["server_cpu"], "raw_client_cpu_s": raw["client_cpu"],
        "socket_per_payload": tw["socket_bytes"] / total_payload, "grpc_per_payload": tw["grpc_bytes"] / total_payload,
    }


# Column headers carry their units; the legend says what each column measures (MB = 10^6 bytes).
WIRE_COLUMNS = ["clients", "update MB", "streams", "ingest MB/s", "raw MB/s", "vs raw x", "p50 s", "p99 s",
                "RSS idle MB", "RSS peak MB", "growth MB", "goal MB", "socket/payload x", "CPU s srv/cli",
                "raw CPU s srv/cli"]
WIRE_LEGEND = """\
legend (MB = 10^6 bytes; s = seconds; x = ratio):
  update MB          size of one client's update; streams = concurrent pushes in flight
  ingest MB/s        update bytes the thinwire server received, checked and folded into FedAvg per second of push time
  raw MB/s           the same bytes, chunks and streams sent to a bare gRPC method that only counts them
  vs raw x           raw time / thinwire time (1.00 = as fast as the raw baseline)
  p50 s, p99 s       median and 99th-percentile time of one push, first chunk sent to reply received
  RSS idle/peak MB   server resident memory before round 0 (clients joined) / at its highest over all rounds
  growth MB          peak - idle; goal MB = 2 x model (fp32) + 100 MB, the target for growth
  socket/payload x   bytes on the server's socket per update byte (framing and control overhead)
  CPU s srv/cli      CPU seconds of the server process / of this process's clients over the measured rounds"""


def run(args: argparse.Namespace) -> int:
    if args.serve:
        (_serve_thinwire if args.serve == "thinwire" else _serve_raw)(args)
        return 0
    from thinwire.config import check_int
    from thinwire.errors import ConfigError
    from thinwire.metrics import format_table

    try:
        clients = [int(x) for x in args.clients.split(",") if x.strip()]
        sizes = [float(x) for x in args.sizes_mb.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("clients", f"bad list {args.clients!r} / {args.sizes_mb!r}", "comma-separated numbers") from None
    if not clients or not sizes or min(clients) < 1 or min(sizes) <= 0:
        raise ConfigError("clients", "need positive client counts and sizes", "e.g. --clients 10,100 --sizes-mb 1,25")
    check_int("chunk_kb", args.chunk_kb, 1, 4096)
    check_int("max_streams", args.max_streams, 1, 1000)
    check_int("connections", args.connections, 1, 256)
    check_int("repeat", args.repeat, 1, 20)
    check_int("rounds", args.rounds, 1, 50)
    import tempfile

    from tqdm import tqdm

    results = []
    with tempfile.TemporaryDirectory(prefix="tw-bench-wire-") as tmp:
        cases = [(n, s) for s in sizes for n in clients]
        for n, s in tqdm(cases, desc="bench wire", unit="case"):
            results.append(bench_case(args, n, s, Path(tmp)))
    print(format_table(WIRE_COLUMNS,
        [(r["clients"], r["update_mb"], r["streams"], r["ingest_mb_s"], r["raw_mb_s"], f"{r['ratio']:.2f}",
          r["p50_s"], r["p99_s"], f"{r['rss_idle_mb']:.0f}", f"{r['rss_peak_mb']:.0f}", f"{r['rss_growth_mb']:.0f}",
          f"{r['rss_goal_mb']:.0f}", f"{r['socket_per_payload']:.4f}",
          f"{r['server_cpu_s']:.2f}/{r['client_cpu_s']:.2f}", f"{r['raw_server_cpu_s']:.2f}/{r['raw_client_cpu_s']:.2f}")
         for r in results]))
    print(WIRE_LEGEND)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(run(p.parse_args()))
