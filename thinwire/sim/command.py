"""`thinwire simulate`: flags or a TOML/YAML file -> a simulated federated run."""
from __future__ import annotations

import argparse

from thinwire import config
from thinwire.config import RunConfig
from thinwire.rundir import in_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, RunConfig)
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite the run directory --name if it holds a run")
    parser.add_argument("--no-plots", action="store_true", help="skip writing PNG plots at the end")


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(RunConfig, args)
    cfg = in_run_dir(cfg, "simulate", resume=args.resume, force=args.force)
    from thinwire.sim.engine import results_table, simulate

    result = simulate(cfg, resume=args.resume)
    data_summary = result.run_dir / "partition.txt"
    print()
    print(results_table(result.summary, clock="virtual"))
    print(f"\nmetrics: {result.run_dir / 'metrics.jsonl'}")
    if data_summary.exists():
        print(f"partition summary: {data_summary}")
    if not args.no_plots:
        from thinwire.plots import plot_run
        for p in plot_run(result.run_dir):
            print(f"plot: {p}")
    return 0
