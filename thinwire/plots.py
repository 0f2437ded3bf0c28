"""The one plotting module of every engine, and `thinwire plot RUN [RUN ...]`.

- Federated runs (simulate, server, launch): PNGs of accuracy vs round, vs time (simulated or wall)
  and vs bytes uploaded. One run: its three plots in its own directory. Several runs (codec A vs
  codec B, ...): each plot overlays one line per run, labelled with the run's name (compare_*.png).
- `thinwire allreduce`: accuracy vs step and vs all-reduce bytes, one line per method.
- `thinwire decentralized`: the federated plots plus consensus error vs epoch.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

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


def _save(fig, ax, path: Path, title: str) -> Path:
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_allreduce(curves: dict[str, list[list[dict[str, Any]]]], out: Path, *, title: str = "",
                   prefix: str = "") -> list[Path]:
    """Accuracy vs step and vs all-reduce bytes, one line per method (mean over the given runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for xkey, xlabel, fname in (("step", "step", "accuracy_vs_step.png"),
                                ("bytes", "all-reduce payload bytes per worker", "accuracy_vs_bytes.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, runs in curves.items():
            n = min(len(r) for r in runs)
            xs = [runs[0][i][xkey] for i in range(n)]
            ys = [sum(r[i]["accuracy"] for r in runs) / len(runs) for i in range(n)]
            ax.plot(xs, ys, label=f"{method}" + (f" (mean of {len(runs)})" if len(runs) > 1 else ""))
        if xkey == "bytes":
            ax.set_xscale("symlog", linthresh=1e4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.legend()
        paths.append(_save(fig, ax, out / (prefix + fname), title))
    return paths


def plot_decentralized(history: Sequence[dict[str, Any]], out: Path, title: str = "") -> list[Path]:
    """accuracy vs epoch / simulated time / bytes (as `plot_run`) plus consensus error vs epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = plot_run(out)
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [r for r in history if r["epoch"] > 0]
    ax.semilogy([r["epoch"] for r in rows], [max(r["consensus_error"], 1e-12) for r in rows])
    ax.set_xlabel("epoch")
    ax.set_ylabel("consensus error sum_i ||x_i - x-bar||^2")
    return [*paths, _save(fig, ax, Path(out) / "consensus_vs_epoch.png", title)]


def plot_time_to_accuracy(curves: dict[str, dict[int, Sequence[tuple[float, float]]]], out: Path, *,
                          title: str = "", target: float | None = None) -> Path:
    """`thinwire bench stragglers`: accuracy vs simulated time, one colour per method, one line
    style per seed (curves: method -> seed -> [(time, accuracy)])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (method, by_seed) in enumerate(curves.items()):
        for j, (seed, pts) in enumerate(sorted(by_seed.items())):
            ax.plot([t for t, _ in pts], [a for _, a in pts], color=f"C{i}", lw=1.0, ls=("-", "--", ":", "-.")[j % 4],
                    label=f"{method}" + (f" (seed {seed})" if len(by_seed) > 1 else ""))
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, ax, out, title)
