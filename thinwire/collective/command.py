"""`thinwire allreduce`: data-parallel training with a compressed mean over the group (any codec, EF/DEF)."""
from __future__ import annotations

import argparse

from thinwire import config
from thinwire.collective.config import AllreduceConfig
from thinwire.collective.engine import run_allreduce
from thinwire.rundir import in_run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, AllreduceConfig)
    parser.add_argument("--force", action="store_true", help="overwrite the run directory --name if it holds a run")
    parser.add_argument("--resume", action="store_true", help="continue the run --name from its last per-epoch "
                        "checkpoint (the same settings; e.g. after a lost worker)")


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(AllreduceConfig, args)
    cfg = in_run_dir(cfg, "allreduce", resume=args.resume, force=args.force)
    s = run_allreduce(cfg, resume=args.resume)
    print(f"{s['method']} {s['codec']} ({s['collective']}): final accuracy {s['final_accuracy']:.4f} (best {s['best_accuracy']:.4f}) after "
          f"{s['steps']} steps on {s['workers']} {s['backend']} workers; collective payload "
          f"{s['bytes_per_step']} B/step ({s['bytes_fraction']:.4f} of dense {s['dense_bytes_per_step']} B); "
          f"step {1e3 * s['step_time']:.2f} ms (all-reduce {1e3 * s['allreduce_time']:.2f} ms); "
          f"evaluated at {s['eval_point']}; run dir {s['run_dir']}")
    return 0
