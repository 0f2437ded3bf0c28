"""`thinwire bench peerloss`: how long a peer-engine run takes to end after losing a peer.

For `thinwire allreduce` and `thinwire decentralized` (each run a real CLI process with its own Ray
instance), once the run's first checkpoint exists one peer process gets SIGKILL (it dies) or
SIGSTOP (alive but silent). Measured: seconds from the signal to the command's exit, its exit
status, whether stderr is the one-line error naming the rank, and whether any peer process is
left. The goal (issue 24): every run ends with exit 2 within 60 s at the default --peer-timeout
(documented bound: at once for a dead peer, --peer-timeout + FAILURE_GRACE_S for a silent one).
`FaultInjector`, `alive` and `wait_gone` are shared with tests/test_peer_death.py.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from thinwire.checkpoint import CHECKPOINT
from thinwire.collective.group import FAILURE_GRACE_S, PEER_TIMEOUT_S, PEERS_FILE

GOAL_S = 60.0
FAULTS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def alive(pid: int) -> bool:
    """A live process (a zombie or a vanished pid is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


class FaultInjector(threading.Thread):
    """Signal rank `rank` (its pid from RUN_DIR/peers.json) as soon as the first checkpoint exists."""

    def __init__(self, run_dir: Path, rank: int, sig: int = signal.SIGKILL, timeout: float = 300.0) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.rank, self.sig, self.timeout = Path(run_dir), rank, sig, timeout
        self.fired_at: float | None = None
        self.pids: list[int] = []

    def run(self) -> None:
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if (self.run_dir / CHECKPOINT).exists():
                self.pids = [int(p["pid"]) for p in json.loads((self.run_dir / PEERS_FILE).read_text())]
                os.kill(self.pids[self.rank], self.sig)
                self.fired_at = time.monotonic()
                return
            time.sleep(0.01)

    def release(self) -> None:
        """Let a stopped process go (so a leftover one can exit rather than sit stopped)."""
        for p in self.pids:
            if alive(p):
                try:
                    os.kill(p, signal.SIGCONT)
                except OSError:
                    pass


def trial(engine: str, fault: str, peer_timeout: float, out_dir: Path, seed: int) -> dict:
    exe = Path(sys.executable).parent / "thinwire"
    name = f"{engine}-{fault}-{seed}"
    argv = [str(exe), engine, "--workers", "2", "--seed", str(seed), "--epochs", "200", "--batch-size", "32",
            "--model", "mlp", "--hidden", "16", "--out-dir", str(out_dir), "--name", name, "--no-progress",
            "--no-plots", "--peer-timeout", f"{peer_timeout:g}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    inj = FaultInjector(out_dir / name, rank=1, sig=FAULTS[fault])
    inj.start()
    try:
        _, err = proc.communicate(timeout=inj.timeout + 2 * peer_timeout + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
        inj.release()
    ended = time.monotonic()
    lines = err.strip().splitlines()
    return {"engine": engine, "fault": fault, "seed": seed, "peer_timeout": peer_timeout,
            "seconds": None if inj.fired_at is None else ended - inj.fired_at, "exit": proc.returncode,
            "one_line": len(lines) == 1 and "rank 1 of 2 lost" in lines[0] and "Traceback" not in err,
            "orphans": 0 if wait_gone(inj.pids) else sum(alive(p) for p in inj.pids),
            "error": lines[-1] if lines else ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", default="allreduce,decentralized", help="comma-separated (default: %(default)s)")
    parser.add_argument("--faults", default="kill,stop", help="kill (SIGKILL) and/or stop (SIGSTOP)")
    parser.add_argument("--peer-timeout", type=float, default=PEER_TIMEOUT_S,
                        help="--peer-timeout of the runs (default: %(default)s, the engines' default)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine and fault (default: %(default)s)")
    parser.add_argument("--out-dir", default="", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from thinwire.config import check_choice, check_float, check_int

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    for e in engines:
        check_choice("engines", e, ("allreduce", "decentralized"))
    for f in faults:
        check_choice("faults", f, tuple(FAULTS))
    check_float("peer_timeout", args.peer_timeout, 0.0, lo_open=True)
    check_int("repeats", args.repeats, 1)
    with tempfile.TemporaryDirectory(prefix="thinwire-peerloss-") as tmp:
        out = Path(args.out_dir or tmp)
        rows = [trial(e, f, args.peer_timeout, out, seed) for e in engines for f in faults
                for seed in range(args.repeats)]
    bound = {"kill": args.peer_timeout, "stop": args.peer_timeout + FAILURE_GRACE_S}
    print(f"peer loss: 2 peers, SIGKILL/SIGSTOP to rank 1 after the first checkpoint, --peer-timeout "
          f"{args.peer_timeout:g}; load average {os.getloadavg()[0]:.1f}")
    ok = True
    for e in engines:
        for f in faults:
            rs = [r for r in rows if r["engine"] == e and r["fault"] == f]
            secs = [r["seconds"] for r in rs if r["seconds"] is not None]
            good = all(r["exit"] == 2 and r["one_line"] and not r["orphans"] for r in rs) and len(secs) == len(rs)
            within = bool(secs) and max(secs) <= min(GOAL_S, bound[f] + 10.0)
            ok &= good and within
            spread = f"median {statistics.median(secs):5.1f} s [{min(secs):5.1f} .. {max(secs):5.1f}]" if secs else "-"
            print(f"  {e:13s} {f:4s}  signal -> exit {spread}  (bound {bound[f]:g} s, goal <= {GOAL_S:g} s)  "
                  f"exit 2 + one line + no orphans: {'yes' if good else 'NO'} ({len(rs)} runs)")
    for r in rows:
        if not (r["exit"] == 2 and r["one_line"]):
            print(f"  {r['engine']} {r['fault']} seed {r['seed']}: exit {r['exit']}: {r['error']}")
    print(f"goal met: {'yes' if ok else 'NO'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"peer_timeout": args.peer_timeout, "rows": rows}, fh, indent=1)
    return 0 if ok else 1
