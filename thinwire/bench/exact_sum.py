"""`thinwire bench exactsum`: cost of folding one update into the server's sum, float32 vs exact.

Times, on the same vector and in alternation: the plain float32 `sum.add_(x, alpha=w)`, the
FedAvg fold of main (float32 add plus its aminmax overflow guard), and `ExactSum.add` (int64
fixed point, order-independent). Prints the median and spread of each and the ratio.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from thinwire.server.exact_sum import DEFAULT_BLOCK, ExactSum


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=float, default=25.0, help="update size in MB of float32 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed folds per method (default: %(default)s)")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, help="ExactSum scratch block, coordinates")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
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

    methods = {"float32 add_": fp32_add, "FedAvg fold (guard + add_)": fedavg_fold, "ExactSum.add": exact_add}
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():                 # warm-up (page faults of the accumulators)
        fn()
    for _ in range(args.repeats):
        for name, fn in methods.items():        # alternated, so drift hits every method alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            if name == "ExactSum.add" and exact.bound > 1 << 60:
                exact.reset()
    base = statistics.median(times["float32 add_"])
    rows = []
    print(f"fold of one {args.mb:g} MB float32 update ({numel} coordinates), {args.threads} thread(s), "
          f"{args.repeats} alternated repeats")
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
