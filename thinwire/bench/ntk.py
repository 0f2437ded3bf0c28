"""`thinwire bench ntk`: FedAvg vs NTK-FL vs CP-NTK-FL, rounds and uplink bytes to a target accuracy.

All methods run through the same engine (`thinwire.sim.engine.simulate`) on the same workload:
Dirichlet(0.5) digits over 100 clients, 10 per round, the MLP (64, 64) (--dataset / --model /
--hidden pick another workload, e.g. MNIST-1D and resnet20, issue 21), identity codec, centralised
test accuracy after every round, for every seed in --seeds (a seed fixes the partition, the initial
weights and the client sample per round, the same for every method). FedAvg runs twice: plain
`fedavg` and the engine default `fedavgm` (server momentum 0.9), both with local SGD (batch 16, one
epoch) at --fedavg-lr. NTK-FL: clients send full Jacobians; CP-NTK-FL: subsampled, randomly
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
METHODS = ("fedavg", "fedavgm", "ntk", "cp-ntk")
FEDAVG_LR = 0.5             # plain FedAvg: best of the lr sweep recorded in docs/BENCHMARKS.md
FEDAVGM_LR = 0.2            # FedAvgM: best of the same sweep (engine default: 0.05)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help="clients (default: 100)")
    p.add_argument("--per-round", type=int, default=10, help="clients per round (default: 10)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, each a full repeat (default: 0,1)")
    p.add_argument("--target", type=float, default=0.9, help="target test accuracy (default: 0.9)")
    p.add_argument("--fedavg-rounds", type=int, default=150, help="FedAvg rounds (default: 150)")
    p.add_argument("--fedavg-lr", type=float, default=FEDAVG_LR,
                   help=f"plain FedAvg client learning rate (default: {FEDAVG_LR}, best of the sweep in docs/BENCHMARKS.md)")
    p.add_argument("--fedavgm-lr", type=float, default=FEDAVGM_LR,
                   help=f"FedAvgM client learning rate (default: {FEDAVGM_LR}, best of the sweep; engine default 0.05)")
    p.add_argument("--from-json", default="", metavar="FILES",
                   help="comma-separated --json outputs of earlier runs: merge their curves (by method and seed) "
                        "and print the table, goals and plots without running anything")
    p.add_argument("--dataset", default="digits", help="data set of every method, as `thinwire simulate --dataset` "
                   "(default: digits)")
    p.add_argument("--model", default="mlp",
                   help="model of every method, as `thinwire simulate --model` (default: mlp)")
    p.add_argument("--hidden", default="64,64", help="MLP hidden sizes for --model mlp (default: 64,64)")
    p.add_argument("--ntk-rounds", type=int, default=40, help="NTK-FL and CP-NTK-FL rounds (default: 40)")
    p.add_argument("--ntk-eta", type=float, default=0.01, help="NTK-FL eta (default: 0.01)")
    p.add_argument("--ntk-taus", default="10,20,50,100,200,500,1000,2000",
                   help="NTK-FL step-count grid (default: 10,20,50,100,200,500,1000,2000)")
    p.add_argument("--ntk-loss", default="ce", choices=("ce", "mse"), help="NTK-FL loss (default: ce)")
    p.add_argument("--project", type=int, default=800, help="CP-NTK-FL projection dimension d' (default: 800)")
    p.add_argument("--subsample", type=float, default=1.0, help="CP-NTK-FL sample fraction (default: 1.0)")
    p.add_argument("--workers", type=int, default=0, help="Ray workers (default: one per core)")
    p.add_argument("--only", default=",".join(METHODS), help=f"methods to run (default: {','.join(METHODS)})")
    p.add_argument("--out-dir", default="", help="run directories (default: a temporary directory)")
    p.add_argument("--json", default="", metavar="FILE", help="write results with per-round curves here")
    p.add_argument("--plot", default="", metavar="PREFIX",
                   help="PNGs PREFIX_accuracy_vs_round.png and PREFIX_accuracy_vs_bytes.png")


def seeds(args: argparse.Namespace) -> list[int]:
    from thinwire.errors import ConfigError
    try:
        out = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    except ValueError:
        out = []
    if not out:
        raise ConfigError("seeds", f"bad value {args.seeds!r}", "comma-separated integers, e.g. 0,1")
    return out


def configs(args: argparse.Namespace, out_dir: str, seed: int) -> dict[str, RunConfig]:
    base = {"out_dir": out_dir, "seed": seed, "dataset": args.dataset, "clients": args.clients,
            "partition": "dirichlet", "alpha": 0.5, "model": args.model, "hidden": args.hidden,
            "per_round": args.per_round,
            "codec": "identity", "eval_every": 1, "progress": True, "workers": args.workers}
    fed = {"rounds": args.fedavg_rounds}
    ntk = {"strategy": "ntk", "rounds": args.ntk_rounds, "ntk_eta": args.ntk_eta, "ntk_taus": args.ntk_taus,
           "ntk_loss": args.ntk_loss}
    all_ = {
        "fedavg": {**base, **fed, "name": f"bench-ntk-fedavg-s{seed}", "strategy": "fedavg", "lr": args.fedavg_lr},
        "fedavgm": {**base, **fed, "name": f"bench-ntk-fedavgm-s{seed}", "strategy": "fedavgm", "lr": args.fedavgm_lr},
        "ntk": {**base, **ntk, "name": f"bench-ntk-ntkfl-s{seed}"},
        "cp-ntk": {**base, **ntk, "name": f"bench-ntk-cpntkfl-s{seed}", "ntk_project": args.project,
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


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def combine(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One method over seeds: per-seed rounds to target (None: not reached), means and spread."""
    runs = list(per_seed.values())
    rounds = [r["rounds_to_target"] for r in runs]
    reached = [x for x in rounds if x is not None]
    tails = [r["tail_accuracy"] for r in runs]
    return {"rounds_to_target": rounds, "all_reached": len(reached) == len(rounds),
            "mean_rounds": _mean(reached) if len(reached) == len(rounds) else None,
            "mean_bytes_to_target": _mean([r["bytes_to_target"] for r in runs if r["bytes_to_target"] is not None])
            if len(reached) == len(rounds) else None,
            "bytes_per_round": _mean([r["bytes_per_round"] for r in runs]),
            "tail_accuracy": _mean(tails), "tail_min": min(tails), "tail_max": max(tails),
            "final_accuracy": _mean([r["final_accuracy"] for r in runs]), "rounds": max(r["rounds"] for r in runs)}


def goals(s: dict[str, dict[str, Any]]) -> list[str]:
    """Goal lines from the seed-combined summaries (mean rounds to target over seeds)."""
    lines = []
    nt = s.get("ntk", {}).get("mean_rounds")
    for fed in ("fedavg", "fedavgm"):
        if fed not in s or "ntk" not in s:
            continue
        fa = s[fed]["mean_rounds"]
        if fa is None or nt is None:
            lines.append(f"rounds goal vs {fed}: not decidable ({fed} {s[fed]['rounds_to_target']}, "
                         f"NTK-FL {s['ntk']['rounds_to_target']} rounds to target per seed)")
        else:
            ok = nt * ROUNDS_RATIO_GOAL <= fa
            lines.append(f"rounds goal vs {fed} (NTK-FL <= {fed}/{ROUNDS_RATIO_GOAL:g}, mean over seeds): "
                         f"{fa / nt:.2f}x fewer rounds -> {'MET' if ok else 'MISSED'}")
    if "ntk" in s and "cp-ntk" in s:
        gap = s["ntk"]["tail_accuracy"] - s["cp-ntk"]["tail_accuracy"]
        ratio = s["ntk"]["bytes_per_round"] / s["cp-ntk"]["bytes_per_round"]
        ok = gap <= CP_ACC_TOLERANCE and ratio >= CP_BYTES_RATIO_GOAL
        lines.append(f"CP-NTK-FL goal (within {CP_ACC_TOLERANCE * 100:g} points of NTK-FL, last-{TAIL}-round mean over "
                     f"seeds, at >= {CP_BYTES_RATIO_GOAL:g}x fewer bytes/round): gap {gap * 100:+.1f} points, "
                     f"{ratio:.1f}x fewer bytes/round -> {'MET' if ok else 'MISSED'}")
    return lines


def plot(curves: dict[str, dict[int, list[dict[str, Any]]]], target: float, prefix: str,
         workload: str = "digits, mlp, 100 clients, 10/round") -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for xkey, xlabel, name, logx in (("round", "round", "accuracy_vs_round", False),
                                     ("cum_bytes_up", "cumulative uplink bytes", "accuracy_vs_bytes", True)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (m, by_seed) in enumerate(curves.items()):
            for j, (seed, c) in enumerate(sorted(by_seed.items())):
                ax.plot([r[xkey] for r in c], [r["accuracy"] for r in c], color=f"C{i}", lw=1.0,
                        ls=("-", "--", ":", "-.")[j % 4], label=f"{m} (seed {seed})")
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        if logx:
            ax.set_xscale("log")
        ax.set_title(f"{workload}, Dirichlet(0.5)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(f"{prefix}_{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def run(args: argparse.Namespace) -> int:
    curves: dict[str, dict[int, list]] = {}
    if args.from_json:
        for f in (x.strip() for x in args.from_json.split(",") if x.strip()):
            for m, by_seed in json.loads(Path(f).read_text())["curves"].items():
                for seed, c in by_seed.items():
                    curves.setdefault(m, {})[int(seed)] = c
        seed_list = sorted({seed for by_seed in curves.values() for seed in by_seed})
    else:
        out_dir = args.out_dir or tempfile.mkdtemp(prefix="thinwire-bench-ntk-")
        seed_list = seeds(args)
        cfgs = {seed: configs(args, out_dir, seed) for seed in seed_list}
        for seed in seed_list:
            for m, cfg in cfgs[seed].items():
                print(f"running {m}, seed {seed} ({cfg.rounds} rounds) ...", flush=True)
                curves.setdefault(m, {})[seed] = run_one(cfg)
    curves = {m: curves[m] for m in METHODS if m in curves}
    per = {m: {seed: summarize(c, args.target) for seed, c in by_seed.items()} for m, by_seed in curves.items()}
    s = {m: combine(v) for m, v in per.items()}

    def rounds_cell(v):
        return " / ".join(str(x) if x is not None else f">{v['rounds']}" for x in v["rounds_to_target"])

    rows = [[m, rounds_cell(v), f"{v['mean_rounds']:.1f}" if v["mean_rounds"] else "-",
             human_bytes(v["mean_bytes_to_target"]) if v["mean_bytes_to_target"] else "-",
             human_bytes(v["bytes_per_round"]), f"{v['tail_accuracy']:.3f} ({v['tail_min']:.3f}-{v['tail_max']:.3f})"]
            for m, v in s.items()]
    print(f"seeds {seed_list}" + ("" if args.from_json else f"; client lr: fedavg {args.fedavg_lr}, fedavgm {args.fedavgm_lr}"))
    print(format_table(["method", f"rounds to {args.target:g} per seed", "mean", "uplink to target (mean)",
                        "uplink/round", f"last-{TAIL} mean acc (min-max)"], rows))
    for line in goals(s):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args) | {"_bench_module": None}, "summary": s,
                                               "per_seed": per, "curves": curves}, indent=1, default=str))
    if args.plot:
        workload = f"{args.dataset}, {args.model}, {args.clients} clients, {args.per_round}/round"
        for p in plot(curves, args.target, args.plot, workload):
            print(f"plot: {p}")
    return 0
