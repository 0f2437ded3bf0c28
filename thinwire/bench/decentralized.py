"""`thinwire bench decentralized`: the CDProxSGT paper's protocol, scaled down to digits.

5 peers on a ring (1/3 mixing weights), label-pairs split (peer i holds classes {i, 9-i}), the
same model, init, minibatches, step size and L1 term for every method: exact all-reduce prox-SGD,
DProxSGT (dense gradient tracking), CDProxSGT with top-k and a second codec, and ChocoSGD (compressed
gossip without tracking). Reports the accuracy of the averaged model x-bar, consensus error, bytes
sent per peer, % non-zeros under the L1 prox, and the simulated time of the fault model.

Goals (issue 15): CDProxSGT within 1 accuracy point of DProxSGT with >= 3x fewer bytes; ChocoSGD
visibly worse on the label-pairs split. `--engine local` (the default) runs the single-process
reference, which gives the same numbers as `--engine ray` (tests/test_decentralized.py) at less
start-up cost on a small machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from thinwire.errors import ConfigError
from thinwire.metrics import format_table

METHODS: dict[str, dict[str, Any]] = {
    "allreduce": {"algorithm": "allreduce"},
    "dproxsgt": {"algorithm": "dproxsgt"},
    "cdproxsgt-top30": {"algorithm": "cdproxsgt", "codec": "topk:fraction=0.3"},
    "cdproxsgt-top20": {"algorithm": "cdproxsgt", "codec": "topk:fraction=0.2"},
    "cdproxsgt-eden4": {"algorithm": "cdproxsgt", "codec": "eden:bits=4"},
    "choco-top30": {"algorithm": "choco", "codec": "topk:fraction=0.3"},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--epochs", type=int, default=30, help="epochs (default: 30)")
    p.add_argument("--workers", type=int, default=5, help="peers on the ring (default: 5, the paper's)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=8, help="per-peer batch (default: 8, the paper's)")
    p.add_argument("--gamma", type=float, default=0.5, help="gamma_x = gamma_y of the compressed methods (paper: 0.5)")
    p.add_argument("--l1", type=float, default=1e-3, help="L1 regularizer mu of every method (default: 1e-3)")
    p.add_argument("--dataset", default="digits", help="digits (default) or fashion-mnist with --data-path")
    p.add_argument("--data-path", default="")
    p.add_argument("--model", default="mlp")
    p.add_argument("--engine", default="local", choices=("local", "ray"))
    p.add_argument("--out-dir", default="runs/bench-decentralized")
    p.add_argument("--json", default="", help="write all results to this JSON file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def run(args: argparse.Namespace) -> int:
    from thinwire.gossip.step import Diverged
    from thinwire.gossip.config import DecentralizedConfig
    from thinwire.gossip.engine import run_decentralized

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ConfigError("methods", f"unknown method {bad[0]!r}", ", ".join(METHODS))
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError("seeds", f"bad list {args.seeds!r}", "comma-separated integers") from None
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
    for k, seed in enumerate(seeds):
        order = names if k % 2 == 0 else names[::-1]  # alternate the order across seeds
        for m in order:
            cfg = DecentralizedConfig(name=f"{m}-s{seed}", out_dir=args.out_dir, seed=seed, workers=args.workers,
                                      topology="ring", partition="label-pairs", dataset=args.dataset,
                                      data_path=args.data_path, model=args.model, epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr, l1=args.l1, gamma_x=args.gamma,
                                      gamma_y=args.gamma, engine=args.engine, progress=args.progress,
                                      plots=False, **METHODS[m])
            try:
                s = run_decentralized(cfg)
            except Diverged as e:  # one unstable method must not hide the others' figures
                print(f"{m} seed {seed}: {e}", flush=True)
                continue
            tail = [r["accuracy"] for r in s["history"][-5:]]
            s["acc_last5"] = sum(tail) / len(tail)
            results[m].append(s)
            print(f"{m} seed {seed}: accuracy {s['final_accuracy']:.4f}, consensus {s['final_consensus_error']:.3g}, "
                  f"{s['bytes_per_peer'] / 1e6:.1f} MB/peer, wall {s['wall_time_s']:.0f} s", flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({m: [{k: v for k, v in s.items() if k != "history"} for s in runs]
                                               for m, runs in results.items()}, indent=2) + "\n")
    plot(results, Path(args.out_dir))
    return 0


def _ms(xs: list[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    m = statistics.fmean(xs) * scale
    if len(xs) < 2:
        return fmt.format(m)
    return fmt.format(m) + " ± " + fmt.format(statistics.stdev(xs) * scale)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    ref = results.get("dproxsgt")
    ref = ref or None
    ref_acc = statistics.fmean(s["final_accuracy"] for s in ref) if ref else None
    ref_bytes = statistics.fmean(s["bytes_per_peer"] for s in ref) if ref else None
    rows = []
    for m, runs in results.items():
        if not runs:
            rows.append([m, "diverged"] + ["-"] * 10)
            continue
        acc = [s["final_accuracy"] for s in runs]
        b = statistics.fmean(s["bytes_per_peer"] for s in runs)
        rows.append([m, runs[0]["codec"], _ms(acc, 1, "{:.4f}"), _ms([s["acc_last5"] for s in runs], 1, "{:.4f}"),
                     _ms([s["final_local_accuracy"] for s in runs], 1, "{:.4f}"),
                     "-" if ref_acc is None else f"{statistics.fmean(acc) - ref_acc:+.4f}",
                     _ms([s["final_consensus_error"] for s in runs], 1, "{:.2e}"), f"{b / 1e6:.1f}",
                     "-" if not ref_bytes else f"{ref_bytes / b:.2f}x",
                     _ms([s["final_nonzero_pct"] for s in runs], 1, "{:.1f}"),
                     _ms([s["simulated_time_s"] for s in runs], 1, "{:.1f}"),
                     _ms([s["wall_time_s"] for s in runs], 1, "{:.0f}")])
    return format_table(["method", "codec", "acc x-bar", "acc last5", "acc local", "acc vs DProxSGT",
                         "consensus", "MB/peer", "fewer bytes", "non-zeros %", "sim time s", "wall s"], rows)


def plot(results: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """Accuracy of x-bar and consensus error vs epoch, one line per method (seed 0... mean over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m, runs in results.items():
        if not runs:
            continue
        n = min(len(s["history"]) for s in runs)
        ep = [runs[0]["history"][i]["epoch"] for i in range(n)]
        mean = lambda k: [statistics.fmean(s["history"][i][k] for s in runs) for i in range(n)]  # noqa: E731
        axes[0].plot(ep, mean("accuracy"), label=m)
        axes[1].semilogy(ep[1:], [max(v, 1e-12) for v in mean("consensus_error")[1:]], label=m)
        axes[2].plot([v / 1e6 for v in mean("bytes_per_peer")], mean("accuracy"), label=m)
    for ax, (xl, yl) in zip(axes, (("epoch", "test accuracy of x-bar"), ("epoch", "consensus error"),
                                   ("MB sent per peer", "test accuracy of x-bar"))):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "decentralized_bench.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
