"""`thinwire allreduce`: K worker actors in one process group (NCCL when every worker has a GPU,
gloo otherwise) train the run's config; the driver merges their per-step stats, evaluates, and
writes metrics.jsonl, summary.json and plots, and after every epoch an atomic checkpoint
(`thinwire.collective.resume`) that `--resume` continues from bit for bit. A worker that dies or
stops answering ends the run within --peer-timeout (`PeerGroup.call`) with a one-line `PeerLost`."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from thinwire.collective.config import AllreduceConfig
from thinwire.collective import resume as resume_mod
from thinwire.collective.group import PEER_TIMEOUT_S, PeerGroup, PeerLost
from thinwire.collective.worker import CollectiveWorker
from thinwire.config import write_resolved_config
from thinwire.errors import ConfigError
from thinwire.plots import plot_allreduce
from thinwire.rundir import make_dir

# Settings a resumed run may change: where it lives and how it is watched. Not epochs (the lr
# schedule depends on the total), threads or backend (they change the floats).
MAY_CHANGE = resume_mod.WATCH_SETTINGS

log = logging.getLogger(__name__)


# -- the driver -----------------------------------------------------------------------------------
class WorkerGroup(PeerGroup):
    """K `CollectiveWorker` actors joined in one process group; runs any number of configs of that size in turn."""

    def __init__(self, workers: int, backend: str = "auto", *, ray_address: str = "", threads: int = 1,
                 port: int = 0, peer_timeout: float = PEER_TIMEOUT_S) -> None:
        super().__init__(CollectiveWorker, workers, backend, ray_address=ray_address, threads=threads, port=port,
                         peer_timeout=peer_timeout)

    def __enter__(self) -> "WorkerGroup":
        return self

    def time_allreduce(self, numel: int, iters: int = 100) -> dict[str, float]:
        res = self.call("time_allreduce", int(numel), int(iters))
        return {"seconds": max(r["seconds"] for r in res), "bytes": res[0]["bytes"]}

    def run(self, cfg: AllreduceConfig, *, resume: bool = False, start: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train one config on this group; writes metrics.jsonl, summary.json, plots and a checkpoint
        after every epoch to the run dir. `resume`: continue from the run dir's checkpoint (`start`:
        that checkpoint, already read and checked by the caller).

        A lost worker raises `PeerLost` (one line: the rank, the last completed step, the checkpoint)."""
        from tqdm import tqdm

        cfg.validate()
        if cfg.workers != self.workers:
            raise ConfigError("workers", f"{cfg.workers} differs from this group's {self.workers}",
                              str(self.workers))
        settings = dataclasses.asdict(cfg)
        run_dir = make_dir("out_dir", cfg.run_dir)
        ckpt = start if start is not None or not resume else read_checkpoint(cfg)
        info = self.call("configure", {**settings, "_driver_cwd": os.getcwd()})[0]
        total, spe = info["total_steps"], info["steps_per_epoch"]
        every = cfg.eval_every or spe
        write_resolved_config(run_dir, cfg)
        self.write_peers(run_dir)
        method = cfg.kind
        eval_point = "x - mean_k e_k" if method == "defa" else "x"
        history: list[dict[str, Any]] = []
        cum = {"bytes": 0, "wire_bytes": 0.0, "steps": 0, "step_time": 0.0, "allreduce_time": 0.0,
               "compute_time": 0.0}
        chunk_stats: list[list[dict[str, Any]]] = []
        saved_epoch: int | None = None
        if ckpt is not None:
            shared = {"x": ckpt["ranks"][0]["x"], "buffers": ckpt["ranks"][0]["buffers"]}
            self.call_each("load_state_dict", [({**r, **shared},) for r in ckpt["ranks"]])
            history, chunk_stats = list(ckpt["history"]), [list(c) for c in ckpt["chunk_stats"]]
            cum.update(ckpt["cum"])
            saved_epoch = int(ckpt["epoch"])
        t_start = time.perf_counter() - (float(ckpt["elapsed"]) if ckpt is not None else 0.0)
        with open(run_dir / "metrics.jsonl", "w") as fh, \
                tqdm(total=total, initial=cum["steps"], desc=f"{cfg.name} {method}", unit="step",
                     disable=not cfg.progress, leave=False) as bar:
            for row in history:  # a resumed run keeps the rows up to its checkpoint, each once
                fh.write(json.dumps(row) + "\n")

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

            try:
                if ckpt is None:
                    record(None)
                while cum["steps"] < total:
                    s = cum["steps"]  # chunks end at evaluations and epoch ends (checkpoints)
                    n = min(every - s % every, spe - s % spe, total - s, 50)
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
                    if cum["steps"] % spe == 0:
                        ranks = self.call("state_dict")
                        for r in ranks[1:]:  # x and the averaged buffers are identical on every rank
                            r["x"] = r["buffers"] = None
                        resume_mod.save(run_dir, "allreduce", settings, epoch=cum["steps"] // spe, step=cum["steps"],
                                        body={"ranks": ranks, "history": history, "cum": dict(cum),
                                              "chunk_stats": chunk_stats,
                                              "elapsed": time.perf_counter() - t_start})
                        saved_epoch = cum["steps"] // spe
            except PeerLost as e:
                raise e.with_progress(resume_mod.stopped_at(cum["steps"], spe, cfg.epochs, saved_epoch,
                                                            run_dir)) from None
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


def run_allreduce(cfg: AllreduceConfig, *, resume: bool = False) -> dict[str, Any]:
    """Python API: start K workers, train `cfg` (from its checkpoint if `resume`), tear down; returns
    the summary metrics. A lost worker tears the group down and raises `PeerLost`."""
    cfg.validate()
    ckpt = read_checkpoint(cfg) if resume else None  # a refused resume costs no cluster start
    with WorkerGroup(cfg.workers, cfg.backend, ray_address=cfg.ray_address, threads=cfg.threads,
                     port=cfg.port, peer_timeout=cfg.peer_timeout) as group:
        return group.run(cfg, resume=resume, start=ckpt)


def read_checkpoint(cfg: AllreduceConfig) -> dict[str, Any] | None:
    """The run dir's checkpoint for --resume (None: none yet); ConfigError if it is not this run's."""
    return resume_mod.read(make_dir("out_dir", cfg.run_dir), "allreduce", dataclasses.asdict(cfg), MAY_CHANGE)
