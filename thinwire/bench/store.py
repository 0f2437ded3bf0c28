"""`thinwire bench store`: the client state store at model size (issue 21).

N stateful clients, each with an error-feedback residual of d float32 coordinates (the default,
1,000 x 11M, is 44 GB: more than this machine's RAM), kept by `ClientStateStore` in files:
1. populate: every client's state is written once, then one checkpoint snapshot (fsync of all);
2. rounds: per round, `--per-round` random clients are read (all of them first, as the
   simulation engine hands a round's states to its workers), their residuals changed, written
   back, and a snapshot taken (what a checkpoint costs);
3. exactness: read-backs are compared with the values written (fp32: bit for bit; fp16: the
   relative error, with its bound 2^-11).
Reported: GB/s written and read, snapshot time, peak RSS of this process (the goal: <= 6 GB for
1,000 x 11M), bytes on disk. Before reading, the page cache of the state files is dropped for this
process's files only (posix_fadvise DONTNEED), so reads come from the disk, not from RAM.
Refuses to start unless the files fit on the disk with `--min-free-gb` to spare.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from thinwire.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=1000, help="stateful clients (default: %(default)s)")
    p.add_argument("--dim", type=int, default=11_000_000, help="residual length per client (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds after populating (default: %(default)s)")
    p.add_argument("--per-round", type=int, default=10, help="clients read and written per round (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="stored precision")
    p.add_argument("--dir", default=None, help="directory for the state files (default: a new temp dir under "
                   "/tmp, removed at the end)")
    p.add_argument("--min-free-gb", type=float, default=20.0,
                   help="refuse to start unless this much disk stays free after the files (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the state files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _drop_cache(root: Path) -> None:
    """Evict this store's (already fsynced) file pages from the page cache: reads then hit the disk."""
    for p in root.glob("*.state"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _state(residual: torch.Tensor, rounds: int):
    from thinwire.client.runtime import ClientState
    return ClientState(memory={"delta": {"kind": "ef", "coeff": 0.0, "steps": rounds, "residual": residual}},
                       rounds=rounds)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from thinwire.config import check_float, check_int
    from thinwire.sim.store import ClientStateStore

    check_int("clients", args.clients, 1)
    check_int("dim", args.dim, 1)
    check_int("rounds", args.rounds, 0)
    check_int("per_round", args.per_round, 1)
    check_float("min_free_gb", args.min_free_gb, 0.0)
    if args.per_round > args.clients:
        raise ConfigError("per-round", f"{args.per_round} exceeds --clients {args.clients}", f"1..{args.clients}")
    elem = 4 if args.dtype == "float32" else 2
    per_client = args.dim * elem
    need = per_client * (args.clients + 3 * args.per_round)      # live files + two snapshots' worth
    base_dir = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    base_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base_dir).free
    if free - need < args.min_free_gb * 1e9:
        raise ConfigError("clients", f"{args.clients} x {args.dim} {args.dtype} needs {need / 1e9:.1f} GB on "
                          f"{base_dir}, which has {free / 1e9:.1f} GB free ({args.min_free_gb:g} GB must stay free)",
                          "fewer clients, a smaller --dim, --dtype float16 or another --dir")
    root = Path(tempfile.mkdtemp(prefix="thinwire-store-", dir=base_dir))
    load = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    base = torch.randn(args.dim, generator=torch.Generator().manual_seed(args.seed))
    buf = torch.empty(args.dim)
    store = ClientStateStore(root, dtype=args.dtype)
    result: dict[str, Any] = {"clients": args.clients, "dim": args.dim, "dtype": args.dtype,
                              "per_round": args.per_round, "load_avg_start": load, "dir": str(base_dir),
                              "rss_mb_start": _rss_peak_mb()}
    try:
        # 1. populate ------------------------------------------------------------------------------
        t0 = time.perf_counter()
        for c in tqdm(range(args.clients), desc="bench store: populate", unit="client", disable=args.no_progress):
            torch.add(base, float(c), out=buf)                        # client c's residual: base + c
            store.put(c, _state(buf, 0))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.state_dict()
        t_snap = time.perf_counter() - t0
        written = store.bytes_written
        result["populate"] = {"bytes": written, "seconds": t_write, "GBps": written / t_write / 1e9,
                              "snapshot_fsync_s": t_snap,
                              "GBps_incl_fsync": written / (t_write + t_snap) / 1e9}
        result["disk_bytes"] = store.disk_bytes()
        _drop_cache(root)
        # 2. rounds -------------------------------------------------------------------------------
        rng = random.Random(args.seed)
        version = {c: 0 for c in range(args.clients)}
        reads, writes, snaps, r_bytes, w_bytes = [], [], [], 0, 0
        max_err, exact = 0.0, True
        for rnd in tqdm(range(1, args.rounds + 1), desc="bench store: rounds", unit="round", disable=args.no_progress):
            chosen = sorted(rng.sample(range(args.clients), args.per_round))
            b0 = store.bytes_read
            t0 = time.perf_counter()
            states = {c: store.get(c) for c in chosen}                # a round's states, all at once
            reads.append(time.perf_counter() - t0)
            r_bytes += store.bytes_read - b0
            for c, st in states.items():                              # check what came back
                res = st.memory["delta"]["residual"]
                torch.add(base, float(c + version[c]), out=buf)
                if args.dtype == "float32":
                    exact &= torch.equal(res, buf)
                else:
                    max_err = max(max_err, float(((res - buf).abs() / buf.abs().clamp_min(2.0 ** -14)).max()))
            b0 = store.bytes_written
            t0 = time.perf_counter()
            for c, st in states.items():                              # the new residual: base + c + rnd
                version[c] = rnd
                res = st.memory["delta"]["residual"]
                torch.add(base, float(c + rnd), out=res)
                store.put(c, _state(res, rnd))
            writes.append(time.perf_counter() - t0)
            w_bytes += store.bytes_written - b0
            del states
            t0 = time.perf_counter()
            store.state_dict()
            snaps.append(time.perf_counter() - t0)
            _drop_cache(root)
        if args.rounds:
            result["rounds"] = {
                "n": args.rounds, "read_GBps": r_bytes / sum(reads) / 1e9, "write_GBps": w_bytes / sum(writes) / 1e9,
                "read_s_per_round": statistics.median(reads), "write_s_per_round": statistics.median(writes),
                "read_s_min_max": [min(reads), max(reads)], "write_s_min_max": [min(writes), max(writes)],
                "snapshot_s_per_round": statistics.median(snaps),
                "read_write_GBps": (r_bytes + w_bytes) / (sum(reads) + sum(writes)) / 1e9}
            result["exact_fp32"] = exact if args.dtype == "float32" else None
            result["fp16_max_rel_error"] = max_err if args.dtype == "float16" else None
        result["rss_peak_mb"] = _rss_peak_mb()
        result["load_avg_end"] = os.getloadavg()[0]
        result["files_after"] = len(list(root.glob("*.state")))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    pop = result["populate"]
    print(f"bench store: {args.clients} clients x {args.dim} {args.dtype} "
          f"({per_client * args.clients / 1e9:.1f} GB of state) in {root}{' (removed)' if not args.keep else ''}; "
          f"load avg {load:.1f} -> {result['load_avg_end']:.1f}")
    print(f"  populate: {pop['bytes'] / 1e9:.1f} GB written in {pop['seconds']:.1f} s ({pop['GBps']:.2f} GB/s), "
          f"snapshot fsync {pop['snapshot_fsync_s']:.1f} s ({pop['GBps_incl_fsync']:.2f} GB/s with it)")
    if args.rounds:
        r = result["rounds"]
        print(f"  rounds: {args.rounds} x {args.per_round} clients: read {r['read_GBps']:.2f} GB/s "
              f"({r['read_s_per_round']:.2f} s/round), write {r['write_GBps']:.2f} GB/s "
              f"({r['write_s_per_round']:.2f} s/round), read+write {r['read_write_GBps']:.2f} GB/s, "
              f"snapshot {r['snapshot_s_per_round']:.2f} s/round")
        if args.dtype == "float32":
            print(f"  exact: every read-back equal bit for bit to what was written: {result['exact_fp32']}")
        else:
            print(f"  fp16: max relative error {result['fp16_max_rel_error']:.3g} (bound 2^-11 = {2 ** -11:.3g})")
    print(f"  peak RSS {result['rss_peak_mb']:.0f} MB (goal <= 6144 MB); state on disk "
          f"{result['disk_bytes'] / 1e9:.1f} GB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"json: {args.json}")
    return 0
