"""`thinwire client`: one process hosting one or many virtual clients of a served run.

    thinwire client --insecure --server 127.0.0.1:50051 --client-id-start 0 --virtual-clients 2

The run's settings (data set, model, codec, fault model) come from the server on Join, so a
client needs only the address, its ids and its credentials.
"""
from __future__ import annotations

import argparse
import logging

from thinwire.config import check_float, check_int
from thinwire.errors import ConfigError
from thinwire.wire.security import add_tls_arguments, client_security

log = logging.getLogger("thinwire.client")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="parameter server address")
    parser.add_argument("--client-id-start", type=int, default=0, help="first client id hosted here (default: 0)")
    parser.add_argument("--virtual-clients", type=int, default=1, help="number of client ids hosted (default: 1)")
    parser.add_argument("--parallel", type=int, default=1, help="virtual clients training at once (default: 1)")
    parser.add_argument("--download-codec", default="", help="ask for the model compressed with this codec (default: fp32)")
    parser.add_argument("--max-wait", type=float, default=60.0,
                        help="seconds to keep retrying an unreachable server before giving up (default: 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for local training (default: 1)")
    parser.add_argument("--body-digest", action="store_true",
                        help="also send each update's sha256 (the server verifies it; guards against forged "
                             "crc32 collisions at ~0.5 ns/byte on each end)")
    add_tls_arguments(parser, server=False)


def parse_server(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("server", f"bad address {value!r}", "HOST:PORT, e.g. 127.0.0.1:50051")
    return value


def run(args: argparse.Namespace) -> int:
    from thinwire.client.fleet import FleetOptions, run_fleet

    target = parse_server(args.server)
    check_int("client_id_start", args.client_id_start, 0)
    check_int("virtual_clients", args.virtual_clients, 1)
    check_int("parallel", args.parallel, 1, 256)
    check_int("threads", args.threads, 1, 256)
    check_float("max_wait", args.max_wait, 0.0, lo_open=True)
    if args.download_codec:
        from thinwire.config import check_codec
        check_codec("download_codec", args.download_codec)
    security = client_security(args)
    ids = list(range(args.client_id_start, args.client_id_start + args.virtual_clients))
    opts = FleetOptions(server=target, client_ids=ids, parallel=args.parallel, download_codec=args.download_codec,
                        max_wait=args.max_wait, torch_threads=args.threads, body_digest=args.body_digest)
    res = run_fleet(opts, security)
    up, down = res.bytes_up, res.bytes_down
    print(f"thinwire client {ids[0]}..{ids[-1]}: {res.summary()}; sent {up.get('wire_bytes', 0)} B ({up.get('payload_bytes', 0)} B payload, "
          f"{up.get('dropped_chunks', 0)} chunks lost, {up.get('retransmitted_chunks', 0)} resent), "
          f"received {down.get('wire_bytes', 0)} B", flush=True)
    return 0 if res.finished else 1
