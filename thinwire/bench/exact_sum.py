"""`thinwire bench exactsum`: cost of folding one update into the server's sum, float32 vs exact.

Times, on the same vector and in alternation: the plain float32 `sum.add_(x, alpha=w)`, the
FedAvg fold of main (float32 add plus its aminmax overflow guard), the int64 fixed-point fold
ExactSum used before issue 21, and `ExactSum.add` now (the exact float64 partial of integers).
Prints the median and spread of each and the ratio.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

from thinwire.server.exact_sum import DEFAULT_BLOCK, ExactSum


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=float, default=25.0, help="update size in MB of float32 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed folds per method (default: %(default)s)")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="ExactSum scratch block, coordinates")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"),
                        help="cpu: this thread's CPU time (robust to other processes' load on a shared "
                        "host); wall: elapsed time (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from thinwire.config import check_float, check_int

    check_float("mb", args.mb, 0.0, lo_open=True)
    check_int("repeats", args.repeats, 1)
    check_int("block", args.block, 1)
    check_int("threads", args.threads, 1, 256)
    torch.set_num_threads(args.threads)
    numel = int(args.mb * 1e6 / 4)
    x = torch.randn(numel) * 1e-2
    acc32 = torch.zeros(numel)
    exact = ExactSum(numel, block=args.block)

    def fp32_add():
        acc32.add_(x, alpha=37.0)

    def fedavg_fold():
        lo, hi = torch.aminmax(x)
        if not math.isfinite(max(-float(lo), float(hi))):
            raise ValueError
        acc32.add_(x, alpha=37.0)

    def exact_add():
        exact.add(x, 37)

    tot64 = torch.zeros(numel, dtype=torch.int64)
    f32s = torch.empty(args.block)
    i64s = torch.empty(args.block, dtype=torch.int64)
    scale = 2.0 ** 32

    def int64_fold():                           # ExactSum.add before issue 21: every update via int64
        for a in range(0, numel, args.block):
            b = min(a + args.block, numel)
            f, i = f32s[:b - a], i64s[:b - a]
            torch.mul(x[a:b], scale, out=f).round_()
            i.copy_(f)
            tot64[a:b].add_(i, alpha=37)

    methods = {"float32 add_": fp32_add, "FedAvg fold (guard + add_)": fedavg_fold,
               "int64 fold (before issue 21)": int64_fold, "ExactSum.add": exact_add}
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():                 # warm-up (page faults of the accumulators)
        fn()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    for _ in range(args.repeats):
        for name, fn in methods.items():        # alternated, so drift hits every method alike
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
            if name == "ExactSum.add" and exact.bound > 1 << 60:
                exact.reset()
            if name.startswith("int64") and (_ + 1) % 1000 == 0:
                tot64.zero_()
    base = statistics.median(times["float32 add_"])
    rows = []
    print(f"fold of one {args.mb:g} MB float32 update ({numel} coordinates), {args.threads} thread(s), "
          f"{args.repeats} alternated repeats, {args.clock} time, load avg {os.getloadavg()[0]:.1f}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"method": name, "median_ms": med * 1e3, "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3,
                     "ratio_vs_fp32": med / base, "GBps": numel * 4 / med / 1e9})
        print(f"  {name:28s} median {med * 1e3:7.2f} ms  [{min(ts) * 1e3:7.2f} .. {max(ts) * 1e3:7.2f}]  "
              f"{numel * 4 / med / 1e9:5.2f} GB/s  x{med / base:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mb": args.mb, "threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=1)
    return 0
