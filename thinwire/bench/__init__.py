"""`thinwire bench NAME`: benchmarks measured as side-by-side ratios in one run.

Each benchmark is a module here exposing `add_arguments(parser)` and `run(args) -> int`; results
are printed as a table, written as JSON with --json, and recorded by hand in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, tuple[str, str]] = {
    "sim": ("thinwire.bench.sim", "thinwire simulation vs Flower run_simulation, same workload"),
    "compression": ("thinwire.bench.compression", "NMSE, bits/coord, throughput and time-to-send per codec"),
    "wire": ("thinwire.bench.wire", "gRPC ingest throughput, latency and server RSS vs a raw stream"),
    "ntk": ("thinwire.bench.ntk", "FedAvg vs NTK-FL vs CP-NTK-FL: rounds and uplink bytes to 0.9 accuracy"),
    "allreduce": ("thinwire.bench.allreduce", "sgd / ef / def / defa over gloo all-reduce"),
    "exactsum": ("thinwire.bench.exact_sum", "fold cost of one update: float32 add vs the exact int64 sum"),
    "ddp": ("thinwire.bench.ddp", "DDP comm hooks: plain, fp16, PowerSGD vs thinwire EDEN / randblock+DEF"),
    "decentralized": ("thinwire.bench.decentralized", "DProxSGT / CDProxSGT / ChocoSGD / all-reduce peers on a ring, "
                      "label-pairs split"),
    "gpu": ("thinwire.bench.gpu", "EDEN encode+decode on CUDA, DDP + hook over NCCL, memory bandwidth"),
    "sgc": ("thinwire.bench.sgc", "uncoded / GC / SR-SGC / M-SGC runtime under bursty stragglers"),
    "peerloss": ("thinwire.bench.peerloss", "allreduce / decentralized: seconds from a killed or stopped peer to "
                 "the run's one-line exit"),
    "soak": ("thinwire.bench.soak", "long served run: server RSS slope per round, CPU per round, p99 push latency"),
    "trust": ("thinwire.bench.trust", "robust rules vs scaled-update attackers, DP-FedAvg accuracy at its epsilon, "
              "secure-aggregation bytes and exactness"),
    "store": ("thinwire.bench.store", "client state store at model size: GB/s read and written, peak RSS, exactness"),
    "stragglers": ("thinwire.bench.stragglers", "FedAvg (all / deadline + over-commit) vs FedBuff vs M-SGC: "
                   "simulated time and bytes to accuracy per fault profile"),
    "scale": ("thinwire.bench.scale", "every engine at d = 0.27M..11M: wall per round vs the local training floor, "
              "peak RSS, bytes, accuracy"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    for name, (modname, helptext) in BENCHES.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_bench_module=modname)
        try:
            importlib.import_module(modname).add_arguments(p)
        except ModuleNotFoundError as e:
            if not (e.name and modname.startswith(e.name)):
                raise


def run(args: argparse.Namespace) -> int:
    modname = getattr(args, "_bench_module", None)
    if not modname:
        print("thinwire bench: choose one of: " + ", ".join(BENCHES))
        return 2
    return int(importlib.import_module(modname).run(args) or 0)
