"""`thinwire bench gpu`: EDEN on CUDA, a DDP + thinwire hook run over NCCL, memory bandwidth.

1. EDEN encode + decode throughput at d = 2^min..2^max on the device (median of --repeats after a
   warm-up, synchronised), the payload bytes, and the same bytes from a CPU encode (sizes up to
   --cpu-check-max-log2) to show the wire format does not depend on the device.
2. Achieved bandwidth: the input vector's bytes over the encode time, as a fraction of the device's
   copy bandwidth measured here (a device-to-device clone, bytes read + written).
3. A DDP training run on the device with the thinwire hook (world size 1, NCCL on CUDA, gloo on
   CPU): step time and hook bytes per step against plain DDP.

`--device cpu` runs the same code on the CPU (a smoke test where no GPU is lent).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from thinwire.config import check_int
from thinwire.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--bits", default="1,2,4", help="EDEN bit budgets (default: 1,2,4)")
    p.add_argument("--min-log2", type=int, default=20, help="smallest d = 2^N (default: 20)")
    p.add_argument("--max-log2", type=int, default=26, help="largest d = 2^N (default: 26)")
    p.add_argument("--repeats", type=int, default=5, help="timed encode+decode pairs per size (default: 5)")
    p.add_argument("--cpu-check-max-log2", type=int, default=22,
                   help="also encode on the CPU up to this size and compare payload bytes (default: 22)")
    p.add_argument("--ddp-steps", type=int, default=50, help="DDP steps per variant (default: 50)")
    p.add_argument("--ddp-width", type=int, default=2048, help="MLP width of the DDP run (default: 2048)")
    p.add_argument("--json", default="", help="write results to this JSON file")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time(fn: Callable[[], Any], dev: torch.device, repeats: int) -> float:
    fn()
    _sync(dev)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def copy_bandwidth(dev: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device clone, counting bytes read and written."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=dev)
    t = _time(lambda: x.clone(), dev, 5)
    return 2 * nbytes / t


def eden_rows(dev: torch.device, bits_list: list[float], lo: int, hi: int, repeats: int,
              cpu_max: int) -> list[dict[str, Any]]:
    from thinwire.compression import Context, get
    rows = []
    for lg in range(lo, hi + 1):
        d = 1 << lg
        x = torch.randn(d, generator=torch.Generator().manual_seed(lg)).to(dev)
        for b in bits_list:
            codec = get("eden", bits=b)
            ctx = Context(seed=1, round=lg, shared=True)
            enc = codec.encode(x, ctx)
            t_enc = _time(lambda: codec.encode(x, ctx), dev, repeats)
            t_dec = _time(lambda: codec.decode(enc, ctx, device=dev), dev, repeats)
            err = float(((codec.decode(enc, ctx, device=dev) - x) ** 2).sum() / (x ** 2).sum())
            cpu_bytes = codec.encode(x.cpu(), ctx).nbytes if lg <= cpu_max else None
            rows.append({"log2_d": lg, "d": d, "bits": b, "payload_bytes": enc.nbytes, "cpu_payload_bytes": cpu_bytes,
                         "encode_s": t_enc, "decode_s": t_dec, "encode_gcoords_s": d / t_enc / 1e9,
                         "decode_gcoords_s": d / t_dec / 1e9, "input_gb_s": 4 * d / t_enc / 1e9, "vnmse": err})
    return rows


def ddp_rows(dev: torch.device, steps: int, width: int) -> list[dict[str, Any]]:
    """World-size-1 DDP on `dev`: plain vs the thinwire hook (EDEN 2 bits, EF; randblock + DEF)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import thinwire.ddp
    backend = "nccl" if dev.type == "cuda" else "gloo"
    tmp = tempfile.mkdtemp(prefix="thinwire-gpu-")
    dist.init_process_group(backend, init_method=f"file://{os.path.join(tmp, 'rdv')}", rank=0, world_size=1)
    rows = []
    try:
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(256, width, generator=g).to(dev)
        ys = torch.randint(0, 10, (256,), generator=g).to(dev)
        for name, codec, fb in (("ddp", None, None), ("eden-2bit+ef", "eden:bits=2", "ef"),
                                ("randblock+def", "randblock:ratio=32", "def")):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                        torch.nn.Linear(width, width), torch.nn.ReLU(),
                                        torch.nn.Linear(width, 10)).to(dev)
            ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
            state = None
            if codec:
                hook, state = thinwire.ddp.comm_hook(codec=codec, feedback=fb, model=model, momentum=0.9)
                ddp.register_comm_hook(state, hook)
            # error feedback: momentum inside the hook, before compression; plain SGD applies the step
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0 if state else 0.9)
            times, losses = [], []
            for t in range(steps):
                t0 = time.perf_counter()
                opt.zero_grad()
                ctx = state.step_context(opt) if state is not None else _null()
                with ctx:
                    loss = torch.nn.functional.cross_entropy(ddp(xs), ys)
                    loss.backward()
                opt.step()
                _sync(dev)
                times.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))
            numel = sum(p.numel() for p in model.parameters())
            rows.append({"variant": name, "backend": backend, "params": numel, "steps": steps,
                         "step_ms": 1e3 * statistics.median(times[1:] or times),
                         "bytes_per_step": (state.payload_bytes / steps) if state else 4 * numel,
                         "first_loss": losses[0], "last_loss": losses[-1]})
    finally:
        dist.destroy_process_group()
    return rows


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def run(args: argparse.Namespace) -> int:
    if args.device not in ("cuda", "cpu"):
        raise ConfigError("device", f"unknown value {args.device!r}", "cuda, cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "no CUDA GPU is visible here", "cpu (smoke run), or run on a GPU machine")
    check_int("min_log2", args.min_log2, 3, 30)
    check_int("max_log2", args.max_log2, args.min_log2, 30)
    check_int("repeats", args.repeats, 1)
    check_int("ddp_steps", args.ddp_steps, 2)
    try:
        bits = [float(b) for b in args.bits.split(",") if b.strip()]
    except ValueError:
        raise ConfigError("bits", f"bad list {args.bits!r}", "comma-separated numbers in (0, 8]") from None
    dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    bw = copy_bandwidth(dev, (1 << 30) if dev.type == "cuda" else (1 << 26))
    print(f"device {name}; torch {torch.__version__}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    rows = eden_rows(dev, bits, args.min_log2, args.max_log2, args.repeats, args.cpu_check_max_log2)
    print(f"\n{'d':>10}{'bits':>6}{'payload B':>12}{'= CPU B':>9}{'enc ms':>9}{'dec ms':>9}{'enc Gc/s':>10}"
          f"{'dec Gc/s':>10}{'in GB/s':>9}{'of copy':>9}{'vNMSE':>8}")
    for r in rows:
        same = "-" if r["cpu_payload_bytes"] is None else ("yes" if r["cpu_payload_bytes"] == r["payload_bytes"]
                                                           else "NO")
        r["fraction_of_copy_bw"] = r["input_gb_s"] * 1e9 / bw
        print(f"{'2^' + str(r['log2_d']):>10}{r['bits']:>6g}{r['payload_bytes']:>12}{same:>9}"
              f"{1e3 * r['encode_s']:>9.2f}{1e3 * r['decode_s']:>9.2f}{r['encode_gcoords_s']:>10.3f}"
              f"{r['decode_gcoords_s']:>10.3f}{r['input_gb_s']:>9.1f}{r['fraction_of_copy_bw']:>9.4f}"
              f"{r['vnmse']:>8.4f}")
    ddp = ddp_rows(dev, args.ddp_steps, args.ddp_width)
    print(f"\nDDP on {name}, world size 1 ({ddp[0]['backend']}), MLP width {args.ddp_width} "
          f"({ddp[0]['params']} params), {args.ddp_steps} steps")
    print(f"{'variant':<16}{'step ms':>9}{'B/step':>12}{'loss first -> last':>22}")
    for r in ddp:
        print(f"{r['variant']:<16}{r['step_ms']:>9.2f}{r['bytes_per_step']:>12.0f}"
              f"{r['first_loss']:>12.4f} -> {r['last_loss']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": name, "copy_bandwidth": bw, "eden": rows, "ddp": ddp},
                                              indent=2) + "\n")
    return 0
