"""`thinwire bench compression`: error, wire size, speed and time-to-send of every codec.

For each codec spec (default: EDEN 0.5-4 bits, random block, top-k, rand-k, QSGD, fp16, identity)
on one workload (a synthetic vector, real gradients of a digits MLP / LeNet, or a file) it
measures NMSE with 1 and n clients (independent per-client seeds), bits per coordinate actually on
the wire (Encoded.nbytes, header included), the ratio against dense fp32, encode / decode
throughput, and the projected time to send one update over 1 Mbit/s .. 10 Gbit/s links. In the
same run it times EDEN (b = 2) encode + decode at d = 2^22 against one FWHT plus one
torch.bucketize pass over the same vector (the goal is a ratio <= 3).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from thinwire.errors import ConfigError, DataError

DEFAULT_CODECS = [
    "eden:bits=0.5", "eden:bits=1", "eden:bits=2", "eden:bits=3", "eden:bits=4",
    "randblock:ratio=16", "randblock:ratio=64",
    "topk:fraction=0.01", "topk:fraction=0.1", "randk:fraction=0.01", "randk:fraction=0.1",
    "qsgd:levels=2", "qsgd:levels=4", "qsgd:levels=16", "qsgd:levels=4,coding=elias",
    "fp16", "identity",
]
LINKS = {"1Mbit": 1e6, "10Mbit": 1e7, "100Mbit": 1e8, "1Gbit": 1e9, "10Gbit": 1e10}
SOURCES = ("synthetic", "digits-mlp", "digits-lenet")
DISTS = ("normal", "lognormal", "uniform")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codecs", nargs="+", default=None, metavar="SPEC",
                   help="codec specs, e.g. eden:bits=2 topk:fraction=0.01 (default: the standard sweep)")
    p.add_argument("--source", default="synthetic", help=f"workload: {', '.join(SOURCES)}")
    p.add_argument("--dist", default="normal", help=f"synthetic distribution: {', '.join(DISTS)}")
    p.add_argument("--dim", type=int, default=1 << 20, help="synthetic vector length (default 2^20)")
    p.add_argument("--file", default=None, help="vector(s) from a .pt or .npy file (rows = clients)")
    p.add_argument("--clients", type=int, default=10, help="clients for the n-client NMSE (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="timing repetitions, the best is kept (default 3)")
    p.add_argument("--speed-dim", type=int, default=1 << 22, help="length for the EDEN speed check (default 2^22)")
    p.add_argument("--no-speed-check", action="store_true", help="skip the EDEN vs FWHT speed check")
    p.add_argument("--no-rotation-check", action="store_true",
                   help="skip EDEN shared vs per-client rotation (NMSE of the mean, server time)")
    p.add_argument("--rotation-dim", type=int, default=1 << 20, help="length for the rotation check (default 2^20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write all results as JSON")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- workloads -----------------------------------------------------------------------------------
def synthetic(dist: str, d: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        z = torch.randn(d, generator=g)
        out.append(z if dist == "normal" else torch.exp(z) if dist == "lognormal" else torch.rand(d, generator=g) * 2 - 1)
    return out


def digits_gradients(model_name: str, n: int, seed: int, warmup: int = 20) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Per-client minibatch gradients of a digits model after `warmup` full-batch SGD steps."""
    from thinwire.data.loaders import load_dataset
    from thinwire.models import build_model

    ds = load_dataset("digits", seed=seed)
    model = build_model(model_name, ds.input_shape, ds.num_classes, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(warmup):
        opt.zero_grad()
        loss_fn(model(ds.x_train), ds.y_train).backward()
        opt.step()
    g = torch.Generator().manual_seed(seed + 1)
    grads = []
    for _ in range(n):
        idx = torch.randint(0, len(ds.y_train), (32,), generator=g)
        model.zero_grad()
        loss_fn(model(ds.x_train[idx]), ds.y_train[idx]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).detach().clone())
    return grads, tuple(p.numel() for p in model.parameters())


def file_vectors(path: str, n: int) -> list[torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"file: {path} does not exist or is not a file")
    try:
        if p.suffix == ".npy":
            obj: Any = torch.from_numpy(np.load(p, allow_pickle=False))
        elif p.suffix == ".pt":
            obj = torch.load(p, map_location="cpu", weights_only=True)
        else:
            raise ConfigError("file", f"unsupported extension {p.suffix!r}", ".pt, .npy")
    except (OSError, ValueError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise DataError(f"file: cannot read {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if not tensors:
            raise DataError(f"file: {path} holds no floating-point tensors")
        obj = torch.cat([t.reshape(-1).float() for t in tensors])
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point() or obj.numel() == 0:
        raise DataError(f"file: {path} must hold a non-empty float tensor / array or a dict of them")
    rows = [obj.float().reshape(-1)] if obj.dim() <= 1 else [r.float().reshape(-1) for r in obj]
    if not all(bool(torch.isfinite(r).all()) for r in rows):
        raise DataError(f"file: {path} contains NaN or Inf")
    return [rows[i % len(rows)] for i in range(n)]


# -- measurement ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_time(fn: Callable[[], Any], repeat: int, device: torch.device, cpu_clock: bool = False) -> tuple[float, Any]:
    clock = time.thread_time if cpu_clock else time.perf_counter
    out, best = None, math.inf
    for _ in range(max(1, repeat)):
        _sync(device)
        t = clock()
        out = fn()
        _sync(device)
        best = min(best, clock() - t)
    return best, out


def measure_codec(spec: str, xs: list[torch.Tensor], segments: tuple[int, ...] | None, repeat: int,
                  device: torch.device, seed: int) -> dict[str, Any]:
    from thinwire import compression as C
    from thinwire.compression import stats
    from thinwire.compression.eden import mean_of

    codec = C.from_spec(spec)
    d = xs[0].numel()
    ctxs = [C.Context(seed=seed, round=1, client_id=i, segments=segments) for i in range(len(xs))]
    x0 = xs[0].to(device)
    t_enc, enc = _best_time(lambda: codec.encode(x0, ctxs[0]), repeat, device)
    t_dec, xh = _best_time(lambda: codec.decode(enc, ctxs[0], device=device), repeat, device)
    wire = C.Encoded.from_bytes(enc.to_bytes())  # what a receiver gets
    v1 = stats.vnmse(codec.decode(wire, ctxs[0], device=device).cpu(), xs[0])
    encs = [codec.encode(x.to(device), cx) for x, cx in zip(xs, ctxs)]
    if codec.name == "eden":
        mean = mean_of(encs, ctxs, device=device)
    else:
        mean = sum(codec.decode(e, cx, device=device).double() for e, cx in zip(encs, ctxs)) / len(xs)
    vn = stats.nmse(mean.cpu(), xs)
    nbytes = enc.nbytes
    return {
        "codec": spec, "d": d, "nbytes": nbytes, "bits_per_coord": 8 * nbytes / d,
        "ratio_vs_fp32": 4 * d / nbytes, "nmse_1": v1, f"nmse_{len(xs)}": vn, "clients": len(xs),
        "encode_s": t_enc, "decode_s": t_dec, "encode_mcoords_s": d / t_enc / 1e6,
        "decode_mcoords_s": d / t_dec / 1e6,
        "send_s": {k: stats.send_seconds(nbytes, bw) for k, bw in LINKS.items()},
        "dense_fp32_send_s": {k: stats.send_seconds(4 * d, bw) for k, bw in LINKS.items()},
    }


def speed_check(d: int, repeat: int, device: torch.device, seed: int, bits: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, Any]:
    """EDEN encode + decode at each b against one FWHT of the same vector (goal: ratio <= 3).

    Per repetition the FWHT and each b's encode + decode run back to back and their ratio is
    taken; the median ratio over repetitions is reported with its min .. max (ratios measured side
    by side, so load on a shared host hits numerator and denominator alike). With one torch
    thread on CPU the times are the thread's CPU time (time.thread_time), which other processes'
    load does not inflate; otherwise wall time. The old baseline (FWHT + one torch.bucketize
    pass) is kept for comparison with earlier figures.
    """
    import statistics

    from thinwire import compression as C
    from thinwire.compression.eden import boundaries
    from thinwire.compression.hadamard import fwht_

    x = torch.randn(d, generator=torch.Generator().manual_seed(seed)).to(device)
    ctx = C.Context(seed=seed)
    cpu_clock = device.type == "cpu" and torch.get_num_threads() == 1
    clock = time.thread_time if cpu_clock else time.perf_counter
    codecs = {b: C.get("eden", bits=b) for b in bits}
    bnd = boundaries(2, str(device))

    def timed(fn: Callable[[], Any]) -> float:
        _sync(device)
        t = clock()
        fn()
        _sync(device)
        return clock() - t

    y = x.clone()
    fwht_(y)
    encs = {b: c.encode(x, ctx) for b, c in codecs.items()}
    for b, c in codecs.items():                      # warm up (caches, tables, CUDA kernels)
        c.decode(encs[b], ctx, device=device)
    fw: list[float] = []
    base: list[float] = []
    per: dict[int, dict[str, list[float]]] = {b: {"enc": [], "dec": [], "ratio": []} for b in bits}
    for _ in range(max(5, repeat)):
        y.copy_(x)
        f = timed(lambda: fwht_(y))
        fw.append(f)
        y.copy_(x)
        base.append(timed(lambda: torch.bucketize(fwht_(y), bnd)))
        for b, c in codecs.items():
            te = timed(lambda c=c: c.encode(x, ctx))
            td = timed(lambda c=c, b=b: c.decode(encs[b], ctx, device=device))
            per[b]["enc"].append(te)
            per[b]["dec"].append(td)
            per[b]["ratio"].append((te + td) / f)
    med = statistics.median
    rows = {b: {"encode_s": med(v["enc"]), "decode_s": med(v["dec"]), "ratio": med(v["ratio"]),
                "ratio_min": min(v["ratio"]), "ratio_max": max(v["ratio"])} for b, v in per.items()}
    out: dict[str, Any] = {"d": d, "clock": "thread CPU time" if cpu_clock else "wall", "repeats": len(fw),
                           "fwht_s": med(fw), "fwht_plus_bucketize_s": med(base), "bits": rows, "goal": 3.0}
    if 2 in rows:                                    # the figure earlier runs reported
        out["eden_b2_encode_decode_s"] = rows[2]["encode_s"] + rows[2]["decode_s"]
        out["ratio"] = out["eden_b2_encode_decode_s"] / med(base)
    return out


def rotation_check(d: int, n: int, bits: int, repeat: int, device: torch.device, seed: int) -> dict[str, Any]:
    """EDEN with per-client (independent) vs per-round shared rotations, n clients: NMSE of the
    mean and the server's time to average the n payloads (shared: rotated-domain sum + one
    inverse transform; independent: n decodes). Two workloads: independent N(0,1) clients, and
    nearly identical clients (x_i = x + 0.1 z_i), where a shared rotation gives every client the
    same quantization error, so averaging cannot cancel it."""
    from thinwire import compression as C
    from thinwire.compression import stats
    from thinwire.compression.eden import mean_of

    g = torch.Generator().manual_seed(seed + 7)
    common = torch.randn(d, generator=g)
    loads = {"independent clients": [torch.randn(d, generator=g) for _ in range(n)],
             "correlated clients (x + 0.1 z_i)": [common + 0.1 * torch.randn(d, generator=g) for _ in range(n)]}
    cpu_clock = device.type == "cpu" and torch.get_num_threads() == 1     # as in speed_check
    out: dict[str, Any] = {"d": d, "clients": n, "bits": bits, "rows": [],
                           "clock": "thread CPU time" if cpu_clock else "wall"}
    for label, xs in loads.items():
        for rotation in ("client", "shared"):
            codec = C.from_spec(f"eden:bits={bits},rotation={rotation}")
            encs = [codec.encode(x.to(device), C.Context(seed=seed, round=1, client_id=i)) for i, x in enumerate(xs)]
            t, mean = _best_time(lambda encs=encs: mean_of(encs, device=device), repeat, device, cpu_clock)
            out["rows"].append({"workload": label, "rotation": rotation, "nmse": stats.nmse(mean.cpu(), xs),
                                "server_s": t, "vnmse_theory": C.eden.theoretical_vnmse(bits)})
    return out


# -- output ----------------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], n: int) -> str:
    head = (f"{'codec':<28}{'bits/coord':>11}{'x fp32':>9}{'NMSE n=1':>11}{f'NMSE n={n}':>12}"
            f"{'enc Mc/s':>10}{'dec Mc/s':>10}{'send@10Mbit':>13}{'fp32@10Mbit':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['codec']:<28}{r['bits_per_coord']:>11.3f}{r['ratio_vs_fp32']:>9.1f}{r['nmse_1']:>11.3g}"
                     f"{r[f'nmse_{n}']:>12.3g}{r['encode_mcoords_s']:>10.1f}{r['decode_mcoords_s']:>10.1f}"
                     f"{r['send_s']['10Mbit']:>12.4f}s{r['dense_fp32_send_s']['10Mbit']:>12.4f}s")
    return "\n".join(lines)


def write_plots(rows: list[dict[str, Any]], out_dir: str, title: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 5))
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["codec"].split(":")[0], []).append(r)
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r["bits_per_coord"])
        pts = [(r["bits_per_coord"], r["nmse_1"]) for r in rs if r["nmse_1"] > 0]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=fam)
            for r in rs:
                if r["nmse_1"] > 0:
                    ax.annotate(r["codec"].partition(":")[2], (r["bits_per_coord"], r["nmse_1"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bits per coordinate on the wire")
    ax.set_ylabel("NMSE (n = 1)")
    ax.set_title(f"NMSE vs wire size ({title})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    p = out / "bench-compression-nmse.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(str(p))

    fig, ax = plt.subplots(figsize=(7, 5))
    bws = list(LINKS.values())
    dense = rows[0]["dense_fp32_send_s"]
    ax.plot(bws, [dense[k] for k in LINKS], "k--", label="dense fp32", linewidth=2)
    for r in rows:
        ax.plot(bws, [r["send_s"][k] for k in LINKS], marker=".", label=r["codec"], linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link bandwidth (bit/s)")
    ax.set_ylabel("time to send one update (s)")
    ax.set_title(f"Time to send vs bandwidth ({title})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    p = out / "bench-compression-send-time.png"
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(str(p))
    return paths


# -- entry -------------------------------------------------------------------------------------------
def _validate(args: argparse.Namespace) -> torch.device:
    if args.source not in SOURCES:
        raise ConfigError("source", f"unknown source {args.source!r}", ", ".join(SOURCES))
    if args.dist not in DISTS:
        raise ConfigError("dist", f"unknown distribution {args.dist!r}", ", ".join(DISTS))
    for name, lo in (("dim", 1), ("clients", 1), ("repeat", 1), ("speed_dim", 1), ("threads", 0), ("rotation_dim", 8)):
        if getattr(args, name) < lo:
            raise ConfigError(name.replace("_", "-"), f"got {getattr(args, name)}", f"an integer >= {lo}")
    if args.device not in ("cpu", "cuda"):
        raise ConfigError("device", f"unknown device {args.device!r}", "cpu, cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but no CUDA device is available", "cpu")
    return torch.device(args.device)


def run(args: argparse.Namespace) -> int:
    from thinwire import compression as C

    device = _validate(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.codecs or DEFAULT_CODECS
    for s in specs:
        try:
            C.from_spec(s)
        except ValueError as e:
            raise ConfigError("codecs", f"bad codec spec {s!r} ({e})") from None
    segments = None
    if args.file:
        xs, title = file_vectors(args.file, args.clients), Path(args.file).name
    elif args.source == "synthetic":
        xs, title = synthetic(args.dist, args.dim, args.clients, args.seed), f"{args.dist}, d={args.dim}"
    else:
        xs, segments = digits_gradients(args.source.split("-")[1], args.clients, args.seed)
        title = f"{args.source} gradients, d={xs[0].numel()}"
    if any(float(x.double().norm()) == 0 for x in xs):
        raise DataError("input: a client vector is all zeros, NMSE is undefined")

    from tqdm import tqdm
    rows = []
    bar = tqdm(specs, desc="bench compression", unit="codec", disable=args.no_progress)
    for spec in bar:
        bar.set_postfix_str(spec)
        rows.append(measure_codec(spec, xs, segments, args.repeat, device, args.seed))
    bar.close()
    n = len(xs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"workload: {title}; clients: {n}; device: {device}; threads: {torch.get_num_threads()}; "
          f"cpus: {os.cpu_count()}; load avg: {load:.1f}")
    print(_table(rows, n))
    print("time to send one update (s): " + ", ".join(
        f"{k}: fp32 {rows[0]['dense_fp32_send_s'][k]:.4g}" for k in LINKS))
    result: dict[str, Any] = {"workload": title, "clients": n, "device": str(device), "load_avg": load,
                              "cpus": os.cpu_count(),
                              "threads": torch.get_num_threads(), "links_bit_s": LINKS, "codecs": rows}
    if not args.no_speed_check:
        sc = speed_check(args.speed_dim, args.repeat, device, args.seed)
        result["speed_check"] = sc
        print(f"speed check d={sc['d']} ({sc['clock']}, median of {sc['repeats']}): one FWHT "
              f"{sc['fwht_s'] * 1e3:.1f} ms, FWHT+bucketize {sc['fwht_plus_bucketize_s'] * 1e3:.1f} ms")
        for b, r in sc["bits"].items():
            print(f"  EDEN b={b}: encode {r['encode_s'] * 1e3:.1f} ms + decode {r['decode_s'] * 1e3:.1f} ms = "
                  f"{r['ratio']:.2f}x one FWHT [{r['ratio_min']:.2f} .. {r['ratio_max']:.2f}] "
                  f"({'meets' if r['ratio'] <= sc['goal'] else 'misses'} the <= {sc['goal']:g}x goal)")
    if not args.no_rotation_check:
        rc = rotation_check(args.rotation_dim, n, 2, args.repeat, device, args.seed)
        result["rotation_check"] = rc
        print(f"rotation check: EDEN b={rc['bits']}, d={rc['d']}, {rc['clients']} clients, {rc['clock']} "
              f"(vNMSE of one client, theory: {rc['rows'][0]['vnmse_theory']:.4f})")
        for r in rc["rows"]:
            print(f"  {r['workload']:<34} rotation={r['rotation']:<7} NMSE of the mean {r['nmse']:.5f}  "
                  f"server average {r['server_s'] * 1e3:7.1f} ms")
    if args.plots:
        result["plots"] = write_plots(rows, args.plots, title)
        print("plots: " + ", ".join(result["plots"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"json: {args.json}")
    return 0
