"""`thinwire decentralized`: peers on a graph train without a server (DProxSGT, CDProxSGT, ChocoSGD, all-reduce)."""
from __future__ import annotations

import argparse

from thinwire import config
from thinwire.gossip.config import DecentralizedConfig
from thinwire.gossip.engine import run_decentralized
from thinwire.metrics import human_bytes
from thinwire.rundir import in_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, DecentralizedConfig)
    parser.add_argument("--force", action="store_true", help="overwrite the run directory --name if it holds a run")
    parser.add_argument("--resume", action="store_true", help="continue the run --name from its last per-epoch "
                        "checkpoint (the same settings, --epochs may grow; e.g. after a lost peer)")


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(DecentralizedConfig, args)
    cfg = in_run_dir(cfg, "decentralized", resume=args.resume, force=args.force)
    s = run_decentralized(cfg, resume=args.resume)
    print(f"{s['algorithm']} ({s['codec']}) on {s['workers']} peers, {s['topology']} ({s['mixing']}, spectral gap "
          f"{s['spectral_gap']:.3f}), {s['partition']} split, {s['engine']}/{s['backend']}: accuracy of x-bar "
          f"{s['final_accuracy']:.4f} (local models {s['final_local_accuracy']:.4f}), consensus error "
          f"{s['final_consensus_error']:.3g}, non-zeros {s['final_nonzero_pct']:.1f}%, "
          f"{human_bytes(s['bytes_per_peer'])} sent per peer, simulated time {s['simulated_time_s']:.1f} s, "
          f"wall {s['wall_time_s']:.1f} s; run dir {s['run_dir']}")
    return 0
