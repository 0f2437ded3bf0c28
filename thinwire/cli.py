"""`thinwire` command line: one entry point, subcommands defined next to the engines they drive.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only maps names to modules, imports them lazily (so `thinwire --help` stays fast) and
turns user errors into one-line messages with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from thinwire import logs
from thinwire.errors import UserError

# name -> (module, one-line help). The module provides add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("thinwire.sim.command", "simulate a federated run with many virtual clients on Ray"),
    "server": ("thinwire.server.command", "run the gRPC parameter server"),
    "client": ("thinwire.client.command", "run one or many clients against a server"),
    "launch": ("thinwire.launch", "start server + client fleet as Ray actors (local or cluster)"),
    "allreduce": ("thinwire.collective.command", "data-parallel training with compressed all-reduce"),
    "decentralized": ("thinwire.gossip.command", "peers on a graph without a server: CDProxSGT, DProxSGT, "
                      "ChocoSGD, all-reduce"),
    "bench": ("thinwire.bench", "benchmarks measured as side-by-side ratios (`thinwire bench --help` lists them)"),
    "plot": ("thinwire.plots", "render PNG plots from a run directory's metrics.jsonl"),
    "certs": ("thinwire.wire.certs", "make a development CA and TLS certificates"),
}


VERBOSE_HELP = "more logging: -v info, -vv debug and the Ray workers' logs"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line naming the problem, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = _Parser(prog="thinwire", description="communication-efficient distributed and federated training")
    from thinwire import __version__

    parser.add_argument("--version", action="version", version=f"thinwire {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules: dict[str, object] = {}
    wanted = "--version" if sys.argv[1:2] == ["--version"] else _requested_command(sys.argv[1:])
    for name, (modname, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        # -v also after the subcommand; its own dest, or the subparser's default would reset the top-level count
        p.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=0, help=VERBOSE_HELP)
        # Only import the module actually run (and all of them for plain --help).
        if wanted in (None, name):
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as e:
                if e.name and modname.startswith(e.name):
                    continue  # command not built in this installation
                raise
            mod.add_arguments(p)  # type: ignore[attr-defined]
            modules[name] = mod
    return parser, modules


def _requested_command(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser, modules = build_parser()
    args = parser.parse_args(sys.argv[1:])
    logs.setup(args.verbose + getattr(args, "sub_verbose", 0))
    if not args.command:
        parser.print_help()
        return 2
    mod = modules.get(args.command)
    if mod is None:
        print(f"thinwire: error: command {args.command!r} is not available in this installation", file=sys.stderr)
        return 2
    try:
        return int(mod.run(args) or 0)  # type: ignore[attr-defined]
    except UserError as e:
        print(f"thinwire {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:            # a full disk anywhere (plots, logs): one line, as for checkpoints (issue 24)
        from thinwire.rundir import DiskFull, is_out_of_space
        if not is_out_of_space(e):
            raise
        print(f"thinwire {args.command}: error: {DiskFull(e.filename or 'out_dir')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
