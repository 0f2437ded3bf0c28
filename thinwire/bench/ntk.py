"""`thinwire bench ntk`: FedAvg vs NTK-FL vs CP-NTK-FL, rounds and uplink bytes to a target accuracy.

All three run through the same engine (`thinwire.sim.engine.simulate`) on the same workload:
Dirichlet(0.5) digits over 100 clients, 10 per round, the MLP (64, 64), same seed (same partition,
same initial weights, same client sample per round), identity codec, centralised test accuracy after
every round. FedAvg is the engine's default server rule (fedavgm: local SGD, lr 0.05, batch 16, one
epoch, server momentum 0.9). NTK-FL: clients send full Jacobians; CP-NTK-FL: subsampled, randomly
projected (d') and shuffled rows. Uplink bytes are the engine's counts of the serialised results.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from thinwire.config import RunConfig, build
from thinwire.metrics import format_table, human_bytes

log = logging.getLogger(__name__)

ROUNDS_RATIO_GOAL = 5.0     # NTK-FL reaches the target in <= 1/5 of FedAvg's rounds
CP_ACC_TOLERANCE = 0.02     # CP-NTK-FL within 2 points of NTK-FL ...
CP_BYTES_RATIO_GOAL = 10.0  # ... at >= 10x fewer uplink bytes per round
TAIL = 5                    # rounds averaged for the end-of-run accuracy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help="clients (default: 100)")
    p.add_argument("--per-round", type=int, default=10, help="clients per round (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--target", type=float, default=0.9, help="target test accuracy (default: 0.9)")
    p.add_argument("--fedavg-rounds", type=int, default=150, help="FedAvg rounds (default: 150)")
    p.add_argument("--ntk-rounds", type=int, default=40, help="NTK-FL and CP-NTK-FL rounds (default: 40)")
    p.add_argument("--ntk-eta", type=float, default=0.01, help="NTK-FL eta (default: 0.01)")
    p.add_argument("--ntk-taus", default="10,20,50,100,200,500,1000,2000",
                   help="NTK-FL step-count grid (default: 10,20,50,100,200,500,1000,2000)")
    p.add_argument("--ntk-loss", default="ce", choices=("ce", "mse"), help="NTK-FL loss (default: ce)")
    p.add_argument("--project", type=int, default=2000, help="CP-NTK-FL projection dimension d' (default: 2000)")
    p.add_argument("--subsample", type=float, default=0.25, help="CP-NTK-FL sample fraction (default: 0.25)")
    p.add_argument("--workers", type=int, default=0, help="Ray workers (default: one per core)")
    p.add_argument("--only", default="fedavg,ntk,cp-ntk", help="methods to run (default: fedavg,ntk,cp-ntk)")
    p.add_argument("--out-dir", default="", help="run directories (default: a temporary directory)")
    p.add_argument("--json", default="", metavar="FILE", help="write results with per-round curves here")
    p.add_argument("--plot", default="", metavar="PREFIX",
                   help="PNGs PREFIX_accuracy_vs_round.png and PREFIX_accuracy_vs_bytes.png")


def configs(args: argparse.Namespace, out_dir: str) -> dict[str, RunConfig]:
    base = {"out_dir": out_dir, "seed": args.seed, "dataset": "digits", "clients": args.clients,
            "partition": "dirichlet", "alpha": 0.5, "model": "mlp", "hidden": [64, 64], "per_round": args.per_round,
            "codec": "identity", "eval_every": 1, "progress": True, "workers": args.workers}
    ntk = {"strategy": "ntk", "rounds": args.ntk_rounds, "ntk_eta": args.ntk_eta, "ntk_taus": args.ntk_taus,
           "ntk_loss": args.ntk_loss}
    all_ = {
        "fedavg": {**base, "name": "bench-ntk-fedavg", "strategy": "fedavgm", "rounds": args.fedavg_rounds},
        "ntk": {**base, **ntk, "name": "bench-ntk-ntkfl"},
        "cp-ntk": {**base, **ntk, "name": "bench-ntk-cpntkfl", "ntk_project": args.project,
                   "ntk_subsample": args.subsample, "ntk_shuffle": True},
    }
    wanted = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in all_]
    if unknown:
        from thinwire.errors import ConfigError
        raise ConfigError("only", f"unknown methods {unknown}", ", ".join(all_))
    return {m: build(RunConfig, all_[m]) for m in wanted}


def summarize(curve: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Rounds (1-based) and cumulative uplink bytes when test accuracy first reaches `target`."""
    hit = next((r for r in curve if r["accuracy"] >= target), None)
    accs = [r["accuracy"] for r in curve]
    tail = accs[-TAIL:]
    return {"rounds_to_target": hit["round"] if hit else None, "bytes_to_target": hit["cum_bytes_up"] if hit else None,
            "bytes_per_round": curve[-1]["cum_bytes_up"] / len(curve), "final_accuracy": accs[-1],
            "best_accuracy": max(accs), "tail_accuracy": sum(tail) / len(tail), "rounds": len(curve)}


def run_one(cfg: RunConfig) -> list[dict[str, Any]]:
    from thinwire.sim.engine import simulate

    res = simulate(cfg)
    return [{"round": m["round"] + 1, "accuracy": m["accuracy"], "cum_bytes_up": m["cum_bytes_up"],
             "bytes_up": m["bytes_up"], "ntk_tau": m.get("ntk_tau")}
            for m in res.metrics if m.get("accuracy") is not None]


def goals(s: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    if "fedavg" in s and "ntk" in s:
        fa, nt = s["fedavg"]["rounds_to_target"], s["ntk"]["rounds_to_target"]
        if fa is None or nt is None:
            lines.append(f"rounds goal: not decidable (FedAvg {fa}, NTK-FL {nt} rounds to target)")
        else:
            ok = nt * ROUNDS_RATIO_GOAL <= fa
            lines.append(f"rounds goal (NTK-FL <= FedAvg/{ROUNDS_RATIO_GOAL:g}): {fa / nt:.2f}x fewer rounds -> "
                         f"{'MET' if ok else 'MISSED'}")
    if "ntk" in s and "cp-ntk" in s:
        gap = s["ntk"]["tail_accuracy"] - s["cp-ntk"]["tail_accuracy"]
        ratio = s["ntk"]["bytes_per_round"] / s["cp-ntk"]["bytes_per_round"]
        ok = gap <= CP_ACC_TOLERANCE and ratio >= CP_BYTES_RATIO_GOAL
        lines.append(f"CP-NTK-FL goal (within {CP_ACC_TOLERANCE * 100:g} points of NTK-FL, last-{TAIL}-round mean, at "
                     f">= {CP_BYTES_RATIO_GOAL:g}x fewer bytes/round): gap {gap * 100:+.1f} points, "
                     f"{ratio:.1f}x fewer bytes/round -> {'MET' if ok else 'MISSED'}")
    return lines


def plot(curves: dict[str, list[dict[str, Any]]], target: float, prefix: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for xkey, xlabel, name, logx in (("round", "round", "accuracy_vs_round", False),
                                     ("cum_bytes_up", "cumulative uplink bytes", "accuracy_vs_bytes", True)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, c in curves.items():
            ax.plot([r[xkey] for r in c], [r["accuracy"] for r in c], label=m)
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        if logx:
            ax.set_xscale("log")
        ax.set_title("digits, Dirichlet(0.5), 100 clients, 10/round")
        ax.legend()
        fig.tight_layout()
        path = Path(f"{prefix}_{name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out.append(path)
    return out


def run(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="thinwire-bench-ntk-")
    cfgs = configs(args, out_dir)
    curves = {}
    for m, cfg in cfgs.items():
        print(f"running {m} ({cfg.rounds} rounds) ...", flush=True)
        curves[m] = run_one(cfg)
    s = {m: summarize(c, args.target) for m, c in curves.items()}
    rows = [[m, v["rounds_to_target"] or f">{v['rounds']}",
             human_bytes(v["bytes_to_target"]) if v["bytes_to_target"] else "-", human_bytes(v["bytes_per_round"]),
             f"{v['final_accuracy']:.3f}", f"{v['tail_accuracy']:.3f}", f"{v['best_accuracy']:.3f}"] for m, v in s.items()]
    print(format_table(["method", f"rounds to {args.target:g}", "uplink to target", "uplink/round", "final acc",
                        f"last-{TAIL} mean", "best acc"], rows))
    for line in goals(s):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args) | {"_bench_module": None}, "summary": s,
                                               "curves": curves}, indent=1, default=str))
    if args.plot:
        for p in plot(curves, args.target, args.plot):
            print(f"plot: {p}")
    return 0
