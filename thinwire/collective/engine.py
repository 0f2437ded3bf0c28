"""`thinwire allreduce`: K worker actors in one process group (NCCL when every worker has a GPU,
gloo otherwise) train the run's config; the driver merges their per-step stats, evaluates, and
writes metrics.jsonl, summary.json and plots."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from thinwire.collective.config import AllreduceConfig
from thinwire.collective.group import PeerGroup
from thinwire.collective.worker import CollectiveWorker
from thinwire.config import write_resolved_config
from thinwire.errors import ConfigError
from thinwire.plots import plot_allreduce

log = logging.getLogger(__name__)


# -- the driver -----------------------------------------------------------------------------------
class WorkerGroup(PeerGroup):
    """K `CollectiveWorker` actors joined in one process group; runs any number of configs of that size in turn."""

    def __init__(self, workers: int, backend: str = "auto", *, ray_address: str = "", threads: int = 1,
                 port: int = 0) -> None:
        super().__init__(CollectiveWorker, workers, backend, ray_address=ray_address, threads=threads, port=port)

    def __enter__(self) -> "WorkerGroup":
        return self

    def time_allreduce(self, numel: int, iters: int = 100) -> dict[str, float]:
        res = self.call("time_allreduce", int(numel), int(iters))
        return {"seconds": max(r["seconds"] for r in res), "bytes": res[0]["bytes"]}

    def run(self, cfg: AllreduceConfig) -> dict[str, Any]:
        """Train one config on this group; writes metrics.jsonl, summary.json and plots to the run dir."""
        from tqdm import tqdm

        cfg.validate()
        if cfg.workers != self.workers:
            raise ConfigError("workers", f"{cfg.workers} differs from this group's {self.workers}",
                              str(self.workers))
        info = self.call("configure", {**dataclasses.asdict(cfg), "_driver_cwd": os.getcwd()})[0]
        total, spe = info["total_steps"], info["steps_per_epoch"]
        every = cfg.eval_every or spe
        run_dir = cfg.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved_config(run_dir, cfg)
        method = cfg.kind
        eval_point = "x - mean_k e_k" if method == "defa" else "x"
        history: list[dict[str, Any]] = []
        cum = {"bytes": 0, "wire_bytes": 0.0, "steps": 0, "step_time": 0.0, "allreduce_time": 0.0,
               "compute_time": 0.0}
        t_start = time.perf_counter()
        with open(run_dir / "metrics.jsonl", "w") as fh, \
                tqdm(total=total, desc=f"{cfg.name} {method}", unit="step", disable=not cfg.progress,
                     leave=False) as bar:
            def record(stats: list[dict[str, Any]] | None) -> None:
                ev = self.call("evaluate")[0]
                step = cum["steps"]
                row: dict[str, Any] = {"step": step, "epoch": step / spe, "method": method,
                                       "codec": info["codec"], "accuracy": ev["accuracy"], "loss": ev["loss"],
                                       "bytes": cum["bytes"], "wire_bytes": cum["wire_bytes"],
                                       "bytes_per_step": _per_step(cum["bytes"], step),
                                       "dense_bytes_per_step": info["dense_bytes"], "eval_point": eval_point,
                                       "eval_allreduce_bytes": ev["eval_allreduce_bytes"],
                                       "elapsed": time.perf_counter() - t_start}
                if stats:
                    n = max(1, stats[0]["steps"])
                    r0 = stats[0]
                    row.update(lr=r0["lr"], train_loss=sum(s["loss"] for s in stats) / (n * len(stats)),
                               step_time=r0["step_time"] / n, allreduce_time=r0["allreduce_time"] / n,
                               compute_time=r0["compute_time"] / n,
                               straggler_sleep=sum(s["sleep_time"] for s in stats) / n)
                history.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                bar.set_postfix(acc=f"{ev['accuracy']:.3f}")

            record(None)
            chunk_stats: list[list[dict[str, Any]]] = []
            while cum["steps"] < total:
                n = min(every - cum["steps"] % every, total - cum["steps"], 50)
                stats = self.call("train", n)
                chunk_stats.append(stats)
                r0 = stats[0]
                cum["steps"] += r0["steps"]
                cum["bytes"] += r0["bytes"]
                cum["wire_bytes"] += r0["wire_bytes"]
                for k in ("step_time", "allreduce_time", "compute_time"):
                    cum[k] += r0[k]
                bar.update(r0["steps"])
                if cum["steps"] % every == 0 or cum["steps"] >= total:
                    merged = _merge_stats(chunk_stats)
                    chunk_stats = []
                    record(merged)
        steps = max(1, cum["steps"])
        final = history[-1]
        per_step = _per_step(cum["bytes"], cum["steps"])
        summary = {"name": cfg.name, "method": method, "codec": info["codec"], "collective": info["collective"],
                   "workers": cfg.workers, "backend": info["backend"],
                   "ratio": cfg.ratio if info["codec"].startswith("randblock") else 1.0, "coeff": cfg.coeff,
                   "seed": cfg.seed,
                   "dataset": cfg.dataset, "model": cfg.model, "params": info["numel"], "steps": cum["steps"],
                   "epochs": cfg.epochs, "final_accuracy": final["accuracy"], "final_loss": final["loss"],
                   "best_accuracy": max(r["accuracy"] for r in history),
                   "bytes_per_step": per_step, "dense_bytes_per_step": info["dense_bytes"],
                   "wire_bytes_per_step": cum["wire_bytes"] / steps,
                   "buffer_bytes_per_step": info["buffer_bytes"], "total_bytes": cum["bytes"],
                   "bytes_fraction": (per_step or 0) / info["dense_bytes"],
                   "step_time": cum["step_time"] / steps, "allreduce_time": cum["allreduce_time"] / steps,
                   "compute_time": cum["compute_time"] / steps, "wall_time": time.perf_counter() - t_start,
                   "eval_point": eval_point, "run_dir": str(run_dir), "history": history}
        (run_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "history"},
                                                         indent=2) + "\n")
        if cfg.plots:
            plot_allreduce({method: [history]}, run_dir, title=f"{cfg.name}: {method} {info['codec']}, "
                                                          f"{cfg.workers} workers")
        return summary


def _per_step(total: int, steps: int) -> int | float | None:
    """Bytes per step: exact integer when every step sent the same, else the mean; None before any step."""
    if steps <= 0:
        return None
    return total // steps if total % steps == 0 else total / steps


def _merge_stats(chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum per-rank stats over several train() chunks."""
    out = []
    for rank_stats in zip(*chunks):
        m: dict[str, Any] = {}
        for s in rank_stats:
            for k, v in s.items():
                if k in ("step", "rank", "lr"):
                    m[k] = v
                else:
                    m[k] = m.get(k, 0) + v
        out.append(m)
    return out


def run_allreduce(cfg: AllreduceConfig) -> dict[str, Any]:
    """Python API: start K workers, train `cfg`, tear down; returns the summary metrics."""
    cfg.validate()
    with WorkerGroup(cfg.workers, cfg.backend, ray_address=cfg.ray_address, threads=cfg.threads,
                     port=cfg.port) as group:
        return group.run(cfg)
