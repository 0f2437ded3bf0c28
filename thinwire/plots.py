"""`thinwire plot RUN [RUN ...]`: PNGs of accuracy vs round, vs time (simulated or wall) and vs bytes uploaded.

One run: its three plots in its own directory. Several runs (codec A vs codec B, ...): each plot
overlays one line per run, labelled with the run's name, written as compare_*.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from thinwire.errors import UserError
from thinwire.metrics import read_metrics

# x-axis key, label, file name
_AXES = (
    ("round", "round", "accuracy_vs_round.png"),
    ("time", "time (s): simulated, or wall clock for served runs", "accuracy_vs_time.png"),
    ("cum_bytes_up", "bytes uploaded (MB)", "accuracy_vs_bytes.png"),
)


def curves_of(run_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """x-axis key -> (xs, accuracies) of one run, for the axes its metrics have."""
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"run_dir: no metrics.jsonl in {str(run_dir)!r}; allowed: a run directory written by thinwire")
    rows = [r for r in read_metrics(run_dir) if r.get("accuracy") is not None]
    out = {}
    for key, _, _ in _AXES:
        pts = [(r[key], r["accuracy"]) for r in rows if r.get(key) is not None]
        if pts:
            xs, ys = (list(v) for v in zip(*pts))
            out[key] = ([x / 1e6 for x in xs] if key == "cum_bytes_up" else xs, ys)
    return out


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or more of its path where names repeat (a/run vs b/run)."""
    paths = [Path(p).resolve() for p in run_dirs]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            return labels
        depth += 1


def figure(key: str, labels: list[str], curves: list[dict]):
    """The accuracy-vs-`key` figure with one line per run that has that axis (None if none has)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = {k: lab for k, lab, _ in _AXES}[key]
    present = [(lab, c[key]) for lab, c in zip(labels, curves) if key in c]
    if not present:
        return None
    single = len(labels) == 1
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, (xs, ys) in present:
        ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=lab)
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (fraction)")
    ax.set_title(f"{labels[0]}: accuracy vs {label}" if single else f"accuracy vs {label}")
    if not single:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Write the standard plots: one run's in its directory, or overlays of several runs (compare_*.png,
    default: the first run's parent directory). Returns the written paths."""
    import matplotlib.pyplot as plt

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise UserError("run_dir: no run given; allowed: one or more run directories")
    curves = [curves_of(d) for d in dirs]  # every run is checked before anything is written
    labels = run_labels(dirs)
    single = len(dirs) == 1
    out = Path(out_dir) if out_dir else (dirs[0] if single else dirs[0].resolve().parent)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, _, fname in _AXES:
        fig = figure(key, labels, curves)
        if fig is None:
            continue
        path = out / (fname if single else "compare_" + fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the standard plots for one run; returns the written paths."""
    return plot_runs([run_dir], out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="+", help="one or more run directories containing metrics.jsonl "
                        "(several: their curves are overlaid in compare_*.png)")
    parser.add_argument("--out", help="where to write PNGs (default: the run directory; for several runs, the "
                        "first run's parent directory)")


def run(args: argparse.Namespace) -> int:
    for p in plot_runs(args.run_dir, args.out):
        print(p)
    return 0
