"""`thinwire bench allreduce`: dense SGD vs EF / DEF / DEF-A random-block all-reduce, side by side.

One worker group (K Ray actors, one gloo/NCCL process group) runs every method x seed with the same
schedule, then times one all_reduce of the dense gradient against one of the random-block payload
on the same group. Prints a table, checks the goals (DEF >= EF + 1 point, DEF within 2 points of
SGD, 1/ratio of the bytes), optionally writes JSON and PNG plots.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from thinwire.config import check_float, check_int
from thinwire.errors import ConfigError

METHODS = ("sgd", "ef", "def", "defa")
TIMING_ROUNDS = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4, help="data-parallel workers (default: 4)")
    p.add_argument("--backend", default="auto", help="auto, gloo or nccl (default: auto)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of sgd,ef,def,defa")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--ratio", type=float, default=64.0, help="random-block compression ratio (default: 64)")
    p.add_argument("--coeff", type=float, default=0.3, help="DEF detach coefficient c (default: 0.3)")
    p.add_argument("--model", default="lenet", help="model (default: lenet)")
    p.add_argument("--epochs", type=int, default=40, help="epochs on digits (default: 40)")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate shared by all methods (default: 0.05)")
    p.add_argument("--ef-lr", type=float, default=0.01,
                   help="also run EF at this lr (the paper's CIFAR scripts: EF 0.01, others 0.05); 0 = off "
                        "(default: 0.01)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16, help="per-worker batch (default: 16)")
    p.add_argument("--lr-decay-at", default="0.5,0.75", help="step decay x0.1 at these fractions of training")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--cifar10-path", default="", help="CIFAR-10 python batches directory: also run CIFAR-10")
    p.add_argument("--cifar-epochs", type=int, default=2, help="epochs on CIFAR-10 (default: 2)")
    p.add_argument("--timing-iters", type=int, default=200, help="all_reduce calls per payload size")
    p.add_argument("--out-dir", default="runs/bench-allreduce", help="run directories and bench.json go here")
    p.add_argument("--plots-dir", default="", help="also write the comparison PNGs here (e.g. docs)")
    p.add_argument("--json", default="", help="write all results to this JSON file")
    p.add_argument("--ray-address", default="")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def _ints(name: str, text: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(name, f"bad list {text!r}", "comma-separated integers, e.g. 0,1,2") from None
    if not out:
        raise ConfigError(name, "empty list", "comma-separated integers, e.g. 0,1,2")
    return out


def _variants(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(label, method, lr) of every configuration to run."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError("methods", f"unknown method(s) {bad or methods!r}", ", ".join(METHODS))
    out = [(m, m, args.lr) for m in methods]
    if args.ef_lr:
        check_float("ef_lr", args.ef_lr, 0.0, lo_open=True)
        out.insert(methods.index("ef") + 1 if "ef" in methods else len(out), (f"ef@lr={args.ef_lr:g}", "ef", args.ef_lr))
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from thinwire.collective.config import AllreduceConfig
    from thinwire.collective.engine import WorkerGroup
    from thinwire.plots import plot_allreduce

    seeds = _ints("seeds", args.seeds)
    variants = _variants(args)
    check_int("workers", args.workers, 1)
    check_int("timing_iters", args.timing_iters, 1)
    suites = [("digits", "", args.epochs)]
    if args.cifar10_path:
        suites.append(("cifar10", args.cifar10_path, args.cifar_epochs))
    # validate every config before starting any worker
    cfgs = []
    for ds, path, epochs in suites:
        for label, method, lr in variants:
            for seed in seeds:
                cfg = AllreduceConfig(
                    name=f"{ds}-{label.replace('@', '-').replace('=', '')}-s{seed}", out_dir=args.out_dir,
                    seed=seed, workers=args.workers, backend=args.backend, method=method, ratio=args.ratio,
                    coeff=args.coeff, dataset=ds, data_path=path, standardize=ds == "cifar10", model=args.model,
                    batch_size=args.batch_size, epochs=epochs, lr=lr, momentum=args.momentum,
                    weight_decay=args.weight_decay, lr_decay_at=args.lr_decay_at,
                    warmup_epochs=args.warmup_epochs, progress=args.progress, plots=False,
                    ray_address=args.ray_address)
                cfgs.append((ds, label, cfg.validate()))

    t0 = time.perf_counter()
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                               "suites": {}}
    with WorkerGroup(args.workers, args.backend, ray_address=args.ray_address) as group:
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for ds, label, cfg in tqdm(cfgs, desc="bench allreduce", unit="run", disable=not args.progress):
            s = group.run(cfg)
            runs.setdefault(ds, {}).setdefault(label, []).append(s)
        timing = {}
        for ds, by_label in runs.items():
            any_sparse = next(s for lab, ss in by_label.items() for s in ss if s["method"] != "sgd") \
                if any(s["method"] != "sgd" for ss in by_label.values() for s in ss) else None
            d = next(iter(by_label.values()))[0]["params"]
            sizes = {"dense": d}
            if any_sparse:
                sizes["sparse"] = any_sparse["bytes_per_step"] // 4
            # alternate the two payloads in rounds and take medians, so background load hits both alike
            per: dict[str, list[float]] = {k: [] for k in sizes}
            nbytes: dict[str, int] = {}
            for _ in range(TIMING_ROUNDS):
                for kind, numel in sizes.items():
                    t = group.time_allreduce(numel, max(1, args.timing_iters // TIMING_ROUNDS))
                    per[kind].append(t["seconds"])
                    nbytes[kind] = t["bytes"]
            timing[ds] = {f"{k}_{f}": v for k in sizes
                          for f, v in (("bytes", nbytes[k]), ("seconds", statistics.median(per[k])))}
        backend = group.backend
    results["backend"] = backend
    results["wall_seconds"] = time.perf_counter() - t0

    for ds, by_label in runs.items():
        table = {}
        for label, ss in by_label.items():
            accs = [s["final_accuracy"] for s in ss]
            table[label] = {
                "method": ss[0]["method"], "lr": ss[0]["history"][1].get("lr") if len(ss[0]["history"]) > 1 else None,
                "final_accuracy": accs, "mean": statistics.fmean(accs),
                "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "bytes_per_step": ss[0]["bytes_per_step"], "dense_bytes_per_step": ss[0]["dense_bytes_per_step"],
                "bytes_fraction": ss[0]["bytes_fraction"],
                "step_time": statistics.fmean(s["step_time"] for s in ss),
                "allreduce_time": statistics.fmean(s["allreduce_time"] for s in ss),
                "compute_time": statistics.fmean(s["compute_time"] for s in ss),
                "steps": ss[0]["steps"], "eval_point": ss[0]["eval_point"]}
        goals = _goals(table, args.ratio)
        results["suites"][ds] = {"table": table, "timing": timing[ds], "goals": goals,
                                 "params": next(iter(by_label.values()))[0]["params"]}
        _print_suite(ds, args, table, timing[ds], goals, backend, next(iter(by_label.values()))[0])
        curves = {label: [s["history"] for s in ss] for label, ss in by_label.items()}
        title = (f"{ds} {args.model}, {args.workers} workers, ratio {args.ratio:g}, c={args.coeff:g}, "
                 f"seeds {args.seeds}")
        for out in filter(None, [Path(args.out_dir), Path(args.plots_dir) if args.plots_dir else None]):
            paths = plot_allreduce(curves, out, title=title, prefix=f"allreduce_{ds}_")
            print("plots: " + ", ".join(str(p) for p in paths))
    print(f"total wall time {results['wall_seconds']:.0f} s")
    for out in filter(None, [args.json, str(Path(args.out_dir) / "bench.json")]):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _goals(table: dict[str, Any], ratio: float) -> dict[str, Any]:
    g: dict[str, Any] = {}
    if "def" in table and "ef" in table:
        best_ef = max(v["mean"] for k, v in table.items() if v["method"] == "ef")
        g["def_minus_best_ef_points"] = 100 * (table["def"]["mean"] - best_ef)
        g["def_ge_ef_plus_1"] = g["def_minus_best_ef_points"] >= 1.0
    if "def" in table and "sgd" in table:
        g["sgd_minus_def_points"] = 100 * (table["sgd"]["mean"] - table["def"]["mean"])
        g["def_within_2_of_sgd"] = g["sgd_minus_def_points"] <= 2.0
    sparse = [v for v in table.values() if v["method"] != "sgd"]
    if sparse:
        frac = sparse[0]["bytes_fraction"]
        g["bytes_fraction"] = frac
        g["bytes_fraction_target"] = 1.0 / ratio
        # per-tensor blocks are max(1, floor(numel / ratio)): within 5% of 1/ratio for real models
        g["bytes_is_1_over_ratio"] = abs(frac * ratio - 1.0) <= 0.05
    return g


def _print_suite(ds: str, args: argparse.Namespace, table: dict[str, Any], timing: dict[str, Any],
                 goals: dict[str, Any], backend: str, first: dict[str, Any]) -> None:
    print(f"\n== {ds}, {args.model} ({first['params']} params), {args.workers} {backend} workers, "
          f"batch {args.batch_size}/worker, {first['steps']} steps ({first['epochs']} epochs), ratio "
          f"{args.ratio:g}, c={args.coeff:g}, seeds {args.seeds}")
    hdr = f"{'method':<14}{'final acc, fraction (mean ± sd)':>32}  {'per seed':<24}{'B/step':>9}{'of dense':>10}" \
          f"{'step ms':>9}{'allred ms':>11}{'compute ms':>12}  eval at"
    print(hdr)
    print("-" * len(hdr))
    for label, v in table.items():
        per = " ".join(f"{a:.3f}" for a in v["final_accuracy"])
        print(f"{label:<14}{v['mean']:>24.4f} ± {v['sd']:<6.4f}  {per:<24}{v['bytes_per_step']:>9}"
              f"{v['bytes_fraction']:>10.4f}{1e3 * v['step_time']:>9.2f}{1e3 * v['allreduce_time']:>11.2f}"
              f"{1e3 * v['compute_time']:>12.2f}  {v['eval_point']}")
    line = f"all_reduce alone (median of {TIMING_ROUNDS} alternating rounds, {args.timing_iters} calls each): dense {timing['dense_bytes']} B " \
           f"{1e3 * timing['dense_seconds']:.3f} ms"
    if "sparse_bytes" in timing:
        line += f", random-block {timing['sparse_bytes']} B {1e3 * timing['sparse_seconds']:.3f} ms " \
                f"({timing['dense_seconds'] / timing['sparse_seconds']:.2f}x faster)"
    print(line)
    if "def_ge_ef_plus_1" in goals:
        print(f"goal DEF >= EF + 1 point: {'met' if goals['def_ge_ef_plus_1'] else 'MISSED'} "
              f"(DEF - best EF = {goals['def_minus_best_ef_points']:+.2f} points)")
    if "def_within_2_of_sgd" in goals:
        print(f"goal DEF within 2 points of dense SGD: {'met' if goals['def_within_2_of_sgd'] else 'MISSED'} "
              f"(SGD - DEF = {goals['sgd_minus_def_points']:+.2f} points)")
    if "bytes_fraction" in goals:
        print(f"goal 1/{args.ratio:g} of the dense bytes: {'met' if goals['bytes_is_1_over_ratio'] else 'MISSED'} "
              f"(payload fraction {goals['bytes_fraction']:.5f} vs {goals['bytes_fraction_target']:.5f})")
