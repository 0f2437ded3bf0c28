"""`thinwire bench stragglers`: which answer to a slow, flaky fleet wins, on one clock.

The same seeded fleet (the demo's: configs/demo.toml, digits Dirichlet(0.5) over 100 clients, the
MLP, fp16 updates, 2 Mbit/s links with 10% chunk loss) runs under each fault profile with:

- sync-all: FedAvgM, 10 clients per round, every round waits for all of them;
- sync-deadline: FedAvgM with the demo's deadline (20 s) and over-commitment (select 13, keep 10);
- fedbuff: buffered asynchronous aggregation (K = 10 per server step, --concurrency clients
  training at once, staleness weight --staleness, the same server momentum);
- m-sgc: sequential gradient coding, only where its assumptions hold (every client every round:
  --per-round == --clients); skipped otherwise.

Profiles: mobile-iid (the mobile device tiers plus 20% i.i.d. 10x stragglers: the demo's faults),
gilbert (the tiers plus Gilbert-Elliott straggler bursts), mobile (the tiers alone) and trace (a
seeded profile trace: lognormal speeds and links, written beside the runs). All on the simulator's
virtual clock: a client's result arrives at its start + download + compute + upload.

Reported per method and profile, over seeds: simulated time and bytes (up + down) until test
accuracy first reaches the target (default: each seed's sync-all final accuracy), and a PNG of
accuracy vs simulated time. Goal: on mobile-iid FedBuff reaches sync-all's final accuracy in
<= 0.5x sync-all's simulated time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from thinwire.config import RunConfig, build, check_float, check_int
from thinwire.errors import ConfigError
from thinwire.metrics import format_table, human_bytes

GOAL_RATIO = 0.5                  # FedBuff time to sync-all's final accuracy <= 0.5 x sync-all's time
GOAL_PROFILE = "mobile-iid"
METHODS = ("sync-all", "sync-deadline", "fedbuff", "m-sgc")
# The demo's fleet (configs/demo.toml) without its round policy and straggler model.
FLEET: dict[str, Any] = dict(dataset="digits", partition="dirichlet", alpha=0.5, model="mlp", lr=0.05, batch_size=16,
                             local_epochs=2, codec="fp16", profile="mobile", bandwidth_mbps=2.0, loss="iid",
                             loss_prob=0.1, loss_policy="retransmit", chunk_size=4096, eval_every=1)
STRAGGLE = dict(straggler_prob=0.2, straggler_slowdown=10.0)
PROFILES: dict[str, dict[str, Any]] = {
    "mobile-iid": dict(profile="mobile", stragglers="iid", **STRAGGLE),
    "gilbert": dict(profile="mobile", stragglers="gilbert", straggler_burst=5.0, **STRAGGLE),
    "mobile": dict(profile="mobile", stragglers="none"),
    "trace": dict(profile="trace", stragglers="none"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", default=",".join(PROFILES), help=f"fault profiles (default: {','.join(PROFILES)})")
    p.add_argument("--methods", default=",".join(METHODS), help=f"methods (default: {','.join(METHODS)}; m-sgc runs "
                   "only with --per-round == --clients)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, each a full repeat (default: 0,1,2)")
    p.add_argument("--clients", type=int, default=100, help="fleet size (default: 100, the demo's)")
    p.add_argument("--per-round", type=int, default=10, help="clients per synchronous round = FedBuff's K (default: 10)")
    p.add_argument("--rounds", type=int, default=40, help="synchronous rounds (default: 40, the demo's)")
    p.add_argument("--deadline-rounds", type=int, default=120,
                   help="sync-deadline rounds (default: 120: its rounds are ~3x shorter, so it runs about as long)")
    p.add_argument("--fedbuff-steps", type=int, default=160, help="FedBuff server steps (default: 160)")
    p.add_argument("--buffer-size", type=int, default=0, help="FedBuff K (default 0: --per-round)")
    p.add_argument("--concurrency", type=int, default=20, help="FedBuff clients in flight (default: 20 = 2K)")
    p.add_argument("--sgc-lr", type=float, default=0.5, help="M-SGC step size on its exact full-batch gradients "
                   "(default: 0.5, the README's)")
    p.add_argument("--staleness", default="polynomial:0.5", help="FedBuff staleness weight (default: polynomial:0.5)")
    p.add_argument("--target", type=float, default=0.0,
                   help="target test accuracy (default 0: each seed's sync-all final accuracy)")
    p.add_argument("--workers", type=int, default=0, help="Ray workers (default: one per core)")
    p.add_argument("--out-dir", default="", help="run directories (default: a temporary directory)")
    p.add_argument("--json", default="", metavar="FILE", help="write the results and curves here")
    p.add_argument("--plot", default="", metavar="PREFIX", help="PNGs PREFIX_<profile>.png (default: in --out-dir)")
    p.add_argument("--from-json", default="", metavar="FILES",
                   help="print the table and plots of earlier --json files, merged (comma-separated; with "
                        "--target: against that target)")


def _list(name: str, value: str, allowed) -> list[str]:
    out = [v.strip() for v in str(value).split(",") if v.strip()]
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise ConfigError(name, f"unknown {bad or value!r}", ", ".join(allowed))
    return out


def _seeds(value: str) -> list[int]:
    try:
        out = [int(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(s < 0 for s in out):
        raise ConfigError("seeds", f"bad value {value!r}", "comma-separated integers >= 0, e.g. 0,1,2")
    return out


def write_trace(path: Path, clients: int, seed: int) -> Path:
    """A seeded device trace: lognormal compute speed and uplink (median 1.0 and 2 Mbit/s), downlink 4x."""
    rng = np.random.default_rng([seed, 22])
    speed = rng.lognormal(-0.5, 0.8, clients)
    up = 2.0 * rng.lognormal(0.0, 0.7, clients)
    lat = 50.0 * rng.lognormal(0.0, 0.4, clients)
    rows = [f"{k},{speed[k]:.4f},{up[k]:.4f},{4 * up[k]:.4f},{lat[k]:.2f}" for k in range(clients)]
    path.write_text("client_id,speed,up_mbps,down_mbps,latency_ms\n" + "\n".join(rows) + "\n")
    return path


def config_for(a: argparse.Namespace, method: str, profile: str, seed: int, out_dir: Path) -> RunConfig | None:
    """The run of one method on one profile and seed (None where the method does not apply)."""
    base = {**FLEET, **PROFILES[profile], "clients": a.clients, "per_round": a.per_round, "seed": seed,
            "out_dir": str(out_dir), "name": f"{profile}-{method}-s{seed}", "progress": False, "workers": a.workers}
    if profile == "trace":
        base["trace"] = str(write_trace(out_dir / f"trace-s{seed}.csv", a.clients, seed))
    if method == "sync-all":
        run = dict(strategy="fedavgm", rounds=a.rounds)
    elif method == "sync-deadline":
        run = dict(strategy="fedavgm", rounds=a.deadline_rounds, overcommit=1.3, deadline=20.0)
    elif method == "fedbuff":
        run = dict(strategy="fedbuff", rounds=a.fedbuff_steps, buffer_size=a.buffer_size or a.per_round,
                   concurrency=min(a.concurrency, a.clients),
                   staleness=a.staleness)
    else:                                   # m-sgc: every worker every round, its own closing rule
        if a.per_round != a.clients:
            return None
        run = dict(strategy="m-sgc", rounds=a.rounds, sgc_b=1, sgc_w=2, sgc_lambda=max(1, a.clients // 5), lr=a.sgc_lr)
    return build(RunConfig, {**base, **run})


def run_one(cfg: RunConfig, pool=None) -> list[dict[str, Any]]:
    from thinwire.sim.engine import simulate

    res = simulate(cfg, pool=pool)
    return [{"round": m["round"], "time": m["time"], "accuracy": m["accuracy"],
             "bytes": m["cum_bytes_up"] + m["cum_bytes_down"], "staleness_mean": m.get("staleness_mean")}
            for m in res.metrics if m.get("accuracy") is not None]


def to_target(curve: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Simulated time and bytes when test accuracy first reaches `target` (None: never)."""
    hit = next((r for r in curve if r["accuracy"] >= target - 1e-12), None)
    return {"time": hit["time"] if hit else None, "bytes": hit["bytes"] if hit else None,
            "steps": hit["round"] + 1 if hit else None, "final": curve[-1]["accuracy"], "total_time": curve[-1]["time"]}


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} +- {sd:.1f}"


def report(results: dict[str, Any], plot_prefix: str) -> list[str]:
    """Print one table per profile and the goal line; returns the plot paths."""
    from thinwire.plots import plot_time_to_accuracy

    paths = []
    for profile, by_method in results["curves"].items():
        sync = by_method.get("sync-all", {})
        rows, ratios = [], {}
        for method, by_seed in by_method.items():
            hits = {}
            for seed, curve in by_seed.items():
                target = results["target"] or (sync[seed][-1]["accuracy"] if seed in sync else None)
                hits[seed] = to_target(curve, target) if target is not None else None
            reached = [h for h in hits.values() if h and h["time"] is not None]
            r = [h["time"] / sync[s][-1]["time"] for s, h in hits.items() if h and h["time"] is not None and s in sync]
            ratios[method] = (r, len(reached) == len(hits))
            rows.append([method, " / ".join(f"{h['time']:.0f}" if h and h["time"] is not None else "never"
                                          for h in hits.values()),
                         _ms([h["time"] for h in reached]),
                         human_bytes(statistics.mean([h["bytes"] for h in reached])) if reached else "-",
                         (f"{statistics.mean(r):.2f} ({min(r):.2f}-{max(r):.2f})" if r else "-"),
                         _ms([c[-1]["time"] for c in by_seed.values()]),
                         f"{statistics.mean([c[-1]['accuracy'] for c in by_seed.values()]):.3f}"])
        what = f"{results['target']:g}" if results["target"] else "sync-all's final acc"
        print(f"\nprofile {profile} (target: {what}; seeds {sorted(next(iter(by_method.values())))})")
        print(format_table(["method", "sim. s to target per seed", "mean +- sd", "bytes to target",
                            "x sync-all's time (min-max)", "run length s", "final acc"], rows))
        if profile == GOAL_PROFILE and not results["target"] and "fedbuff" in ratios and ratios["fedbuff"][0]:
            r, all_ = ratios["fedbuff"]
            ok = all_ and max(r) <= GOAL_RATIO
            print(f"goal (FedBuff reaches sync-all's final accuracy in <= {GOAL_RATIO:g}x its simulated time, every "
                  f"seed): {statistics.mean(r):.2f}x mean, {max(r):.2f}x worst -> {'MET' if ok else 'MISSED'}")
        curves = {m: {s: [(p["time"], p["accuracy"]) for p in c] for s, c in by_seed.items()}
                  for m, by_seed in by_method.items()}
        paths.append(plot_time_to_accuracy(curves, Path(f"{plot_prefix}_{profile}.png"),
                                           title=f"{profile}: accuracy vs simulated time",
                                           target=results["target"] or None))
    return [str(p) for p in paths]


def run(a: argparse.Namespace) -> int:
    if a.from_json:
        files = [f.strip() for f in a.from_json.split(",") if f.strip()]
        results = {"target": 0.0, "curves": {}}
        for f in files:                       # later files add (or replace) method / seed curves
            part = json.loads(Path(f).read_text())
            results["target"] = part.get("target", 0.0)
            for p, bm in part["curves"].items():
                for m, bs in bm.items():
                    results["curves"].setdefault(p, {}).setdefault(m, {}).update({int(s): c for s, c in bs.items()})
        for p, bm in results["curves"].items():     # methods in their usual order
            results["curves"][p] = {m: bm[m] for m in METHODS if m in bm}
        prefix = a.plot or str(Path(files[0]).with_suffix(""))
        if a.target:                          # the same curves against another target
            check_float("target", a.target, 0.0, 1.0)
            results["target"] = a.target
    else:
        profiles = _list("profiles", a.profiles, PROFILES)
        methods = _list("methods", a.methods, METHODS)
        seeds = _seeds(a.seeds)
        check_int("rounds", a.rounds, 2)
        check_int("fedbuff_steps", a.fedbuff_steps, 1)
        check_int("deadline_rounds", a.deadline_rounds, 1)
        check_float("target", a.target, 0.0, 1.0)
        out_dir = Path(a.out_dir or tempfile.mkdtemp(prefix="thinwire-bench-stragglers-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        prefix = a.plot or str(out_dir / "stragglers")
        cfgs = {(p, m, s): config_for(a, m, p, s, out_dir) for p in profiles for m in methods for s in seeds}
        for m in methods:
            if all(c is None for (_, mm, _), c in cfgs.items() if mm == m):
                print(f"{m}: skipped (M-SGC needs every client every round: --per-round == --clients)")
        from tqdm import tqdm

        results: dict[str, Any] = {"target": a.target, "curves": {},
                                   "settings": {k: v for k, v in vars(a).items() if not k.startswith("_")}}
        todo = [(k, c) for k, c in cfgs.items() if c is not None]
        from thinwire.sim.engine import WorkerPool

        # One Ray and one pool of workers for every run: they share the model architecture (the
        # workers' only run-specific state); each run loads its own partition into them.
        pool = WorkerPool(todo[0][1])
        try:
            for (p, m, s), cfg in tqdm(todo, desc="stragglers", unit="run"):
                results["curves"].setdefault(p, {}).setdefault(m, {})[s] = run_one(cfg, pool)
                if a.json:
                    Path(a.json).write_text(json.dumps(results, indent=1))
        finally:
            pool.close()
    for path in report(results, prefix):
        print(f"plot: {path}")
    return 0
