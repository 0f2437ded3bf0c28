"""`thinwire bench ddp`: a user's DDP loop with torch's hooks and thinwire's hook, side by side.

K gloo CPU workers (Ray actors from the peer layer) train the same LeNet on digits (and CIFAR-10
when --cifar10-path is given) with identical data order, init and optimizer, once per variant:
plain DDP, torch's fp16 hook, torch's PowerSGD hook (rank 1 and 4), thinwire's hook with EDEN
1/2/4 bits and randblock + DEF (hook-side momentum and weight decay, plain SGD). Bytes are counted by wrapping `torch.distributed`'s collectives in
every worker (plain DDP's built-in all-reduce runs in C++: its 4 bytes x parameters is used), so
torch's and thinwire's hooks are measured the same way. Time over a link assumes ring collectives:
all-reduce sends 2(K-1)/K x payload per worker, all-gather (K-1) x payload.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from thinwire.config import check_int
from thinwire.errors import ConfigError
from thinwire.collective.group import Peer, PeerGroup

EDEN = "max_overhead=0.02"  # chunking that keeps EDEN's zero padding under 2 % of the parameters
VARIANTS: dict[str, dict[str, Any]] = {
    "ddp": {"kind": "plain"},
    "torch-fp16": {"kind": "fp16"},
    "powersgd-r1": {"kind": "powersgd", "rank": 1},
    "powersgd-r4": {"kind": "powersgd", "rank": 4},
    "eden-1bit": {"kind": "thinwire", "codec": f"eden:bits=1,{EDEN}", "feedback": "none"},
    "eden-2bit": {"kind": "thinwire", "codec": f"eden:bits=2,{EDEN}", "feedback": "none"},
    "eden-4bit": {"kind": "thinwire", "codec": f"eden:bits=4,{EDEN}", "feedback": "none"},
    "randblock-def": {"kind": "thinwire", "codec": "randblock:ratio=32", "feedback": "def", "coeff": 0.3},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4, help="gloo CPU workers (default: 4)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--epochs", type=int, default=30, help="epochs on digits (default: 30)")
    p.add_argument("--batch-size", type=int, default=16, help="per-worker batch (default: 16)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--cifar10-path", default="", help="CIFAR-10 python batches directory: also run CIFAR-10")
    p.add_argument("--cifar-epochs", type=int, default=2)
    p.add_argument("--json", default="", help="write all results to this JSON file")
    p.add_argument("--ray-address", default="")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


@contextlib.contextmanager
def count_collectives(world: int) -> Iterator[dict[str, float]]:
    """Count the bytes this process passes to torch.distributed collectives (and their ring wire bytes)."""
    import torch.distributed as dist
    c = {"bytes": 0, "wire": 0.0}
    orig_ar, orig_ag = dist.all_reduce, dist.all_gather

    def all_reduce(tensor, *a, **kw):
        n = tensor.numel() * tensor.element_size()
        c["bytes"] += n
        c["wire"] += 2.0 * (world - 1) / world * n
        return orig_ar(tensor, *a, **kw)

    def all_gather(tensor_list, tensor, *a, **kw):
        n = tensor.numel() * tensor.element_size()
        c["bytes"] += n
        c["wire"] += (world - 1) * n
        return orig_ag(tensor_list, tensor, *a, **kw)

    dist.all_reduce, dist.all_gather = all_reduce, all_gather
    try:
        yield c
    finally:
        dist.all_reduce, dist.all_gather = orig_ar, orig_ag


class DDPBenchWorker(Peer):
    """One rank of the benchmark: trains one variant with a plain DDP loop, returns its figures."""

    def run_variant(self, name: str, spec: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
        from torch.nn.parallel import DistributedDataParallel as DDP

        import thinwire.ddp
        from thinwire.collective.allreduce import batch_indices, steps_per_epoch
        from thinwire.data.loaders import load_dataset
        from thinwire.models import build_model

        seed = opts["seed"]
        ds = load_dataset(opts["dataset"], opts["data_path"] or None, seed=seed,
                          standardize=opts["dataset"] == "cifar10")
        model = build_model("lenet", ds.input_shape, ds.num_classes, seed=seed)
        numel = sum(p.numel() for p in model.parameters())
        ddp = DDP(model)
        state = None
        kind = spec["kind"]
        if kind == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif kind == "powersgd":
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
            ps = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=spec["rank"],
                                    start_powerSGD_iter=2, random_seed=seed)
            ddp.register_comm_hook(ps, psgd.powerSGD_hook)
        # error feedback: momentum and weight decay before compression, in the hook (the EF/DEF rule),
        # plain SGD in the optimizer; otherwise torch's SGD applies them to the (unbiased) mean
        hook_side = kind == "thinwire" and spec["feedback"] != "none"
        if kind == "thinwire":
            hook, state = thinwire.ddp.comm_hook(
                codec=spec["codec"], feedback=spec["feedback"], coeff=spec.get("coeff", 0.3), seed=seed, model=model,
                momentum=opts["momentum"] if hook_side else 0.0,
                weight_decay=opts["weight_decay"] if hook_side else 0.0)
            ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(model.parameters(), lr=opts["lr"], momentum=0.0 if hook_side else opts["momentum"],
                              weight_decay=0.0 if hook_side else opts["weight_decay"])
        spe = steps_per_epoch(len(ds.y_train), self.world, opts["batch_size"])
        total = spe * opts["epochs"]
        milestones = [round(0.5 * total), round(0.75 * total)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
        step_times, losses = [], []
        with count_collectives(self.world) as counted:
            for t in range(total):
                t0 = time.perf_counter()
                idx = batch_indices(len(ds.y_train), self.world, opts["batch_size"], seed, t, self.rank)
                opt.zero_grad()
                ctx = state.step_context(opt) if hook_side else contextlib.nullcontext()
                with ctx:
                    loss = F.cross_entropy(ddp(ds.x_train[idx]), ds.y_train[idx])
                    loss.backward()
                opt.step()
                sched.step()
                step_times.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))
        if kind == "plain":  # the reducer's built-in all-reduce (C++): every gradient, float32
            counted["bytes"] += 4 * numel * total
            counted["wire"] += 2.0 * (self.world - 1) / self.world * 4 * numel * total
        model.eval()
        with torch.no_grad(), (state.output_point() if state is not None else contextlib.nullcontext()):
            acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
        return {"variant": name, "accuracy": acc, "params": numel, "steps": total,
                "bytes_per_step": counted["bytes"] / total, "wire_bytes_per_step": counted["wire"] / total,
                "hook_bytes_per_step": (state.payload_bytes / total) if state is not None else None,
                "step_time": statistics.median(step_times), "train_loss": statistics.fmean(losses[-spe:])}


def _list(name: str, text: str, allowed: list[str] | None = None) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out or (allowed and any(s not in allowed for s in out)):
        raise ConfigError(name, f"bad list {text!r}", ", ".join(allowed) if allowed else "a comma-separated list")
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    check_int("workers", args.workers, 1)
    check_int("epochs", args.epochs, 1)
    variants = _list("variants", args.variants, list(VARIANTS))
    try:
        seeds = [int(s) for s in _list("seeds", args.seeds)]
    except ValueError:
        raise ConfigError("seeds", f"bad list {args.seeds!r}", "comma-separated integers") from None
    suites = [("digits", "", args.epochs)]
    if args.cifar10_path:
        suites.append(("cifar10", args.cifar10_path, args.cifar_epochs))
    t0 = time.perf_counter()
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "suites": {}}
    with PeerGroup(DDPBenchWorker, args.workers, "gloo", ray_address=args.ray_address) as group:
        jobs = [(ds, path, ep, v, s) for ds, path, ep in suites for s in seeds for v in variants]
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for ds, path, ep, v, s in tqdm(jobs, desc="bench ddp", unit="run", disable=not args.progress):
            opts = {"seed": s, "dataset": ds, "data_path": path, "epochs": ep, "batch_size": args.batch_size,
                    "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay}
            res = group.call("run_variant", v, VARIANTS[v], opts)
            raw.setdefault(ds, {}).setdefault(v, []).append({**res[0], "step_time": max(r["step_time"] for r in res)})
    for ds, by_v in raw.items():
        table = {}
        for v, rs in by_v.items():
            accs = [r["accuracy"] for r in rs]
            b = rs[0]["bytes_per_step"]
            w = rs[0]["wire_bytes_per_step"]
            table[v] = {"accuracy": accs, "mean": statistics.fmean(accs),
                        "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "bytes_per_step": b,
                        "wire_bytes_per_step": w, "step_time": statistics.fmean(r["step_time"] for r in rs),
                        "link_1g_ms": 1e3 * 8 * w / 1e9, "link_10g_ms": 1e3 * 8 * w / 1e10,
                        "params": rs[0]["params"], "steps": rs[0]["steps"]}
        goals = _goals(table)
        results["suites"][ds] = {"table": table, "goals": goals}
        _print(ds, args, table, goals)
    results["wall_seconds"] = time.perf_counter() - t0
    print(f"total wall time {results['wall_seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _goals(table: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    if "ddp" in table and "eden-4bit" in table:
        d, e = table["ddp"], table["eden-4bit"]
        g["eden4_minus_ddp"] = e["mean"] - d["mean"]
        g["eden4_bytes_ratio"] = d["bytes_per_step"] / e["bytes_per_step"]
        g["eden4_within_half_point"] = g["eden4_minus_ddp"] >= -0.005
    ps = {k: v for k, v in table.items() if k.startswith("powersgd")}
    tw = {k: v for k, v in table.items() if k.startswith(("eden", "randblock"))}
    # matched bytes: for each PowerSGD run, thinwire's best codec sending no more bytes per step
    for k, v in ps.items():
        cands = {n: t for n, t in tw.items() if t["bytes_per_step"] <= v["bytes_per_step"] * 1.05}
        if cands:
            best = max(cands, key=lambda n: cands[n]["mean"])
            g[f"vs_{k}"] = {"thinwire": best, "thinwire_acc": cands[best]["mean"], "powersgd_acc": v["mean"],
                            "met": cands[best]["mean"] >= v["mean"]}
        else:
            g[f"vs_{k}"] = {"thinwire": None, "met": None}
    return g


def _print(ds: str, args: argparse.Namespace, table: dict[str, Any], goals: dict[str, Any]) -> None:
    first = next(iter(table.values()))
    print(f"\n== {ds}, lenet ({first['params']} params), {args.workers} gloo CPU workers, batch {args.batch_size}"
          f"/worker, {first['steps']} steps, seeds {args.seeds}")
    hdr = (f"{'variant':<15}{'accuracy (mean ± sd)':>22}{'B/step':>10}{'x fewer':>9}{'wire B/step':>13}"
           f"{'step ms':>9}{'1 Gb/s ms':>11}{'10 Gb/s ms':>12}")
    print(hdr)
    print("-" * len(hdr))
    dense = table.get("ddp", first)["bytes_per_step"]
    for v, r in table.items():
        print(f"{v:<15}{r['mean']:>14.4f} ± {r['sd']:<5.4f}{r['bytes_per_step']:>10.0f}"
              f"{dense / r['bytes_per_step']:>9.2f}{r['wire_bytes_per_step']:>13.0f}{1e3 * r['step_time']:>9.2f}"
              f"{r['link_1g_ms']:>11.4f}{r['link_10g_ms']:>12.5f}")
    if "eden4_within_half_point" in goals:
        print(f"goal EDEN 4-bit within 0.5 points of DDP at 8x fewer bytes: "
              f"{'met' if goals['eden4_within_half_point'] else 'MISSED'} (difference {goals['eden4_minus_ddp']:+.4f}, "
              f"{goals['eden4_bytes_ratio']:.2f}x fewer bytes)")
    for k, g in goals.items():
        if k.startswith("vs_"):
            if g["thinwire"] is None:
                print(f"goal thinwire >= {k[3:]} at matched bytes: no thinwire variant at or under its bytes")
            else:
                print(f"goal thinwire >= {k[3:]} at matched bytes: {'met' if g['met'] else 'MISSED'} "
                      f"({g['thinwire']} {g['thinwire_acc']:.4f} vs {g['powersgd_acc']:.4f})")
