"""`thinwire plot RUN_DIR`: PNGs of accuracy vs round, vs simulated time and vs bytes uploaded."""
from __future__ import annotations

import argparse
from pathlib import Path

from thinwire.errors import UserError
from thinwire.metrics import read_metrics

# x-axis key, label, file name
_AXES = (
    ("round", "round", "accuracy_vs_round.png"),
    ("time", "simulated time (s)", "accuracy_vs_time.png"),
    ("cum_bytes_up", "bytes uploaded (MB)", "accuracy_vs_bytes.png"),
)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the standard plots for one run; returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"run_dir: no metrics.jsonl in {str(run_dir)!r}; allowed: a run directory written by thinwire")
    rows = [r for r in read_metrics(run_dir) if r.get("accuracy") is not None]
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, label, fname in _AXES:
        pts = [(r[key], r["accuracy"]) for r in rows if key in r]
        if not pts:
            continue
        xs, ys = zip(*pts)
        if key == "cum_bytes_up":
            xs = [x / 1e6 for x in xs]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, ys, marker="." if len(xs) < 60 else None)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{run_dir.name}: accuracy vs {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(out / fname)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory containing metrics.jsonl")
    parser.add_argument("--out", help="where to write PNGs (default: the run directory)")


def run(args: argparse.Namespace) -> int:
    for p in plot_run(args.run_dir, args.out):
        print(p)
    return 0
