"""The round engine: the one round loop of every federated run, simulated or served.

    select -> configure_client (one task per client) -> transport.open_round -> results arrive
    one by one in clock order -> strategy.accept -> strategy.should_close / deadline / nobody
    outstanding -> transport.close_round -> finalize -> evaluate -> one metrics row -> checkpoint

Two things differ between the modes and are injected as a `Transport`, which owns its clock:
simulation (a Ray worker pool computes the clients, the fault model and a virtual clock order
their arrivals: thinwire.sim.engine) and served mode (gRPC pushes on the wall clock:
thinwire.server.app). Metric rows, checkpoints and the resolved config are written here, so both
modes produce the same files.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from thinwire import checkpoint
from thinwire.config import RunConfig, to_dict, write_resolved_config
from thinwire.faults.crash import crash_point
from thinwire.errors import ConfigError, UserError
from thinwire.metrics import MetricsWriter, read_metrics
from thinwire.rundir import appending, check_resume_settings, make_dir
from thinwire.task import Task, decode_result_split

from thinwire.server.driver import RoundPolicy
from thinwire.server.strategy import Result, RoundView, Strategy

log = logging.getLogger("thinwire.rounds")
ACCEPTED_LOG = "accepted.jsonl"
# Settings a resumed run may change: how long it runs and how it is watched, not what it computes.
RESUMABLE_CHANGES = frozenset({"rounds", "progress", "workers", "ray_address", "eval_every", "tensorboard"})


@dataclass
class Arrival:
    """One client's complete result reaching the server. `reply(verdict, message)` tells the sender
    what became of it (served mode: the waiting gRPC handler)."""
    client_id: int
    round: int
    job: int
    payload: bytes | memoryview
    scalars: dict[str, float]
    time: float = 0.0
    holes: Sequence[tuple[int, int]] = ()       # body byte ranges lost in transit (one per lost chunk)
    reply: Callable[[str, str], None] | None = None

    def answer(self, verdict: str, message: str = "") -> None:
        if self.reply is not None:
            self.reply(verdict, message)


@dataclass
class Lost:
    """A selected client that will not deliver (gone, or its result was refused for good)."""
    client_id: int


class Transport(Protocol):
    clock: str                 # "virtual" or "wall"
    segments: tuple[int, ...] | None
    refusal_is_final: bool     # a refused client will not deliver again this round

    def candidates(self, rnd: int) -> list[int] | None: ...          # None: stop the run
    def open_round(self, rnd: int, vec: torch.Tensor, tasks: dict[int, Task]) -> None: ...
    def now(self) -> float: ...                                        # seconds since the round opened
    def next_event(self, until: float) -> Arrival | Lost | None: ...  # None: the clock reached `until`
    def close_round(self, rnd: int, keep_late: bool) -> dict[str, Any]: ...  # the round's I/O figures
    # Rounds with a session (secure aggregation): `open_session` before `open_round`, and
    # `finish_session` after `close_round`, returning the round time its last exchange took.
    def open_session(self, rnd: int, session: Any) -> None: ...
    def finish_session(self, rnd: int, session: Any) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        accs = [m["accuracy"] for m in self.metrics if m.get("accuracy") is not None]
        return accs[-1] if accs else float("nan")


class RoundEngine:
    """Drives rounds of one run over a transport; `run()` returns when done or stopped."""

    def __init__(self, cfg: RunConfig, transport: Transport, init_vec: torch.Tensor, *,
                 evaluator: Callable[[torch.Tensor], tuple[float, float]] | None = None,
                 strategy: Strategy | None = None, resume: bool = False, checkpoints: bool = True,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        from thinwire.server.strategy import make_strategy

        self.cfg = cfg
        self.transport = transport
        self.run_dir = make_dir("out_dir", cfg.run_dir)
        self.policy = RoundPolicy.from_config(cfg)
        self.strategy = strategy or make_strategy(cfg)
        self.evaluator = evaluator
        self.checkpoints = checkpoints
        self.should_stop = should_stop
        self.global_vec = init_vec.detach().float().reshape(-1).clone()
        self.rounds_done = 0
        self.history: list[dict[str, Any]] = []
        self.totals = {"bytes_up": 0, "bytes_down": 0, "time": 0.0, "wall": 0.0}
        self.metrics: list[dict[str, Any]] = []
        self.last_eval: tuple[float, float] = (float("nan"), float("nan"))
        self.delayed_done: set[tuple[int, int, int]] = set()   # (round, client, job) accepted late
        self.tasks_by_round: dict[int, dict[int, Task]] = {}
        self.resumed_from: int | None = None
        self.checkpoint_kind = checkpoint_kind(transport)
        ckpt = load_resume_checkpoint(self.run_dir, cfg, self.checkpoint_kind, checkpoints=checkpoints) if resume else None
        if resume and ckpt is None:
            log.info("--resume: no checkpoint in %s yet; starting at round 0", self.run_dir)
        if ckpt is not None:
            try:                                # a verified file whose contents still do not fit (e.g. another model)
                if ckpt["global"].numel() != self.global_vec.numel():
                    raise ValueError(f"its model has {ckpt['global'].numel()} parameters, this run's {self.global_vec.numel()}")
                self.global_vec = ckpt["global"].float().reshape(-1)
                self.strategy.load_state_dict(ckpt["strategy"])
                transport.load_state_dict(ckpt.get("clients", {}))
                self.rounds_done = int(ckpt["round"]) + 1
                self.history = list(ckpt["history"])
                self.totals.update(ckpt["totals"])
            except UserError:                   # already one line (e.g. the store's client state files are missing)
                raise
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
                raise checkpoint.CheckpointError(self.run_dir / checkpoint.CHECKPOINT,
                                                 f"does not fit this run ({type(e).__name__}: {e})") from None
            self.resumed_from = self.rounds_done
        self.writer = MetricsWriter(self.run_dir, resume_after=self.rounds_done - 1 if ckpt is not None else None,
                                    tensorboard=getattr(cfg, "tensorboard", False))
        if ckpt is not None and ckpt.get("row") and not any(
                r.get("round") == ckpt["round"] for r in (read_metrics(self.writer.path) if self.writer.path.exists() else [])):
            self.writer.write(ckpt["row"])      # the checkpointed round's row, lost to a crash or full disk
        (self.run_dir / ACCEPTED_LOG).write_text("".join(json.dumps(h) + "\n" for h in self.history))
        write_resolved_config(self.run_dir, cfg)
        self.t0 = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.rounds_done >= self.cfg.rounds

    # -- the loop --------------------------------------------------------------------------------
    def run(self, progress: bool = False, desc: str = "run") -> RunResult:
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=self.cfg.rounds, initial=self.rounds_done, desc=f"{desc} {self.cfg.name}", unit="round",
                       dynamic_ncols=True)
        try:
            while not self.finished and not self.should_stop():
                row = self.one_round()
                if row is None:
                    break
                if bar is not None:
                    bar.update(1)
                    acc = row.get("accuracy")
                    bar.set_postfix(acc=f"{acc:.3f}" if acc is not None else "-", t=f"{row['time']:.0f}s",
                                    accepted=row["accepted"])
        finally:
            if bar is not None:
                bar.close()
            self.writer.close()
        return RunResult(self.run_dir, self.metrics, summarize(self.metrics) if self.metrics else {})

    def one_round(self) -> dict[str, Any] | None:
        rnd = self.rounds_done
        t_round = time.perf_counter()
        candidates = self.transport.candidates(rnd)
        if candidates is None:
            return None
        strategy = self.strategy
        selected = sorted(strategy.select(rnd, candidates, self.policy))
        tasks = {cid: strategy.configure_client(rnd, cid) for cid in selected}
        self.tasks_by_round[rnd] = tasks
        flying = strategy.in_flight() if strategy.spans_steps else {}    # asynchronous: work spanning steps
        for old in [r for r in self.tasks_by_round if r < rnd - strategy.max_delay
                    or (strategy.spans_steps and r < rnd and r not in set(flying.values()))]:
            del self.tasks_by_round[old]
        if strategy.spans_steps:
            self.delayed_done = {k for k in self.delayed_done if k[0] in self.tasks_by_round}
        strategy.begin_round(rnd, self.global_vec)
        session = strategy.round_session()
        if session is not None:
            self.transport.open_session(rnd, session)
        self.transport.open_round(rnd, strategy.broadcast(rnd, self.global_vec), tasks)
        log.info("round %d: selected %s", rnd, selected)

        view = RoundView(round=rnd, selected=selected, arrived={}, per_round=self.policy.per_round,
                         carried={c: r for c, r in flying.items() if r < rnd and c in self.tasks_by_round.get(r, {})})
        deadline = self.policy.deadline if self.policy.deadline > 0 else math.inf
        rejected = delayed = holes = 0
        while True:
            if self.should_stop():
                return None
            view.now = self.transport.now()
            decision = strategy.should_close(view)
            if decision is True or not view.outstanding or view.now >= deadline:
                break
            wake = math.inf if decision is False else float(decision)
            if wake <= view.now:
                break
            ev = self.transport.next_event(min(wake, deadline))
            if ev is None:
                continue
            if isinstance(ev, Lost):
                view.lost.add(ev.client_id)
                if ev.client_id in view.selected or ev.client_id in view.carried:
                    strategy.lost(ev.client_id)
                continue
            verdict = self._take(ev, rnd, view)
            rejected += verdict == "refused"
            delayed += verdict == "accepted" and ev.round != rnd
            holes += len(ev.holes) if verdict == "accepted" else 0
        round_time = min(view.now, deadline)
        io = self.transport.close_round(rnd, keep_late=strategy.max_delay > 0)
        if session is not None:                        # e.g. secure aggregation's unmasking
            session.close_inputs()
            round_time += self.transport.finish_session(rnd, session)
            for k in ("up", "down"):                   # its messages, counted by the session
                extra = session.message_bytes(k)
                io[f"bytes_{k}"] = io.get(f"bytes_{k}", 0) + extra
                io[f"payload_{k}"] = io.get(f"payload_{k}", 0) + extra
        arrivals = {**view.late, **view.arrived}          # results of earlier rounds (delayed, async) too
        accepted = sorted(arrivals, key=lambda c: (arrivals[c], c))
        if self.policy.enough(len(view.arrived) + delayed):
            new_vec, agg = strategy.finalize()
        else:
            strategy.finalize()
            new_vec, agg = self.global_vec, {"aggregated": 0, "skipped": True}
        self.global_vec = new_vec.detach().float().reshape(-1)
        io["hole_chunks"] = holes
        return self._finish_round(rnd, t_round, round_time, selected, accepted, rejected, delayed, io, agg)

    def _take(self, ev: Arrival, rnd: int, view: RoundView) -> str:
        """Hand one arrival to the strategy; returns and answers its verdict."""
        current = ev.round == rnd and ev.client_id in view.selected and ev.client_id not in view.arrived
        key = (ev.round, ev.client_id, ev.job)
        delayed_ok = (ev.round < rnd and rnd - ev.round <= self.strategy.max_delay and key not in self.delayed_done
                      and ev.client_id in self.tasks_by_round.get(ev.round, {}))
        if not (current or delayed_ok):
            ev.answer("late", f"round {ev.round} no longer takes results")
            return "late"
        task = self.tasks_by_round[ev.round][ev.client_id]
        try:
            tensors, encoded = decode_result_split(ev.payload, task, self.transport.segments, ev.holes,
                                                   keep_encoded=self.strategy.folds_encoded)
            self.strategy.accept(Result(client_id=ev.client_id, round=ev.round, job=ev.job, task=task,
                                        tensors=tensors, scalars=dict(ev.scalars), time=ev.time, encoded=encoded))
            crash_point("after_fold", ev.round)
        except ValueError as e:
            ev.answer("refused", str(e))
            if self.transport.refusal_is_final and (current or (delayed_ok and ev.client_id in view.carried)):
                view.lost.add(ev.client_id)
                self.strategy.lost(ev.client_id)
            return "refused"
        finally:
            tensors = encoded = None    # a decoded tensor may view the sender's buffer: drop it before replying
        if current:
            view.arrived[ev.client_id] = ev.time
        else:
            self.delayed_done.add(key)
            view.late[ev.client_id] = ev.time
        ev.answer("accepted", "")
        return "accepted"

    def _finish_round(self, rnd, t_round, round_time, selected, accepted, rejected, delayed, io, agg):
        cfg = self.cfg
        self.totals["bytes_up"] += io.get("bytes_up", 0)
        self.totals["bytes_down"] += io.get("bytes_down", 0)
        self.totals["time"] += round_time
        row: dict[str, Any] = {
            "round": rnd,
            "clock": self.transport.clock,
            "time": self.totals["time"],
            "round_time": round_time,
            "selected": len(selected),
            "accepted": len(accepted),
            "accepted_clients": accepted,
            "dropped_clients": [c for c in selected if c not in accepted and c not in self.strategy.in_flight()],
            "delayed_accepted": delayed,
            "stragglers": io.get("stragglers", []),
            "bytes_up": io.get("bytes_up", 0),
            "bytes_down": io.get("bytes_down", 0),
            "payload_up": io.get("payload_up", 0),
            "payload_down": io.get("payload_down", 0),
            "cum_bytes_up": self.totals["bytes_up"],
            "cum_bytes_down": self.totals["bytes_down"],
            "dropped_chunks": io.get("dropped_chunks", 0),
            "retransmitted_chunks": io.get("retransmitted_chunks", 0),
            "hole_chunks": io.get("hole_chunks", 0),
            "rejected_pushes": rejected + io.get("rejected_pushes", 0),
            "reassembly_bytes": io.get("reassembly_bytes", 0),
            "reassembly_buffers": io.get("reassembly_buffers", 0),
            "train_loss": agg.get("train_loss"),
            "aggregated": agg.get("aggregated", 0),
        }
        row.update({k: v for k, v in agg.items() if k not in row and k != "skipped"})
        if self.evaluator is not None and ((rnd + 1) % cfg.eval_every == 0 or rnd == cfg.rounds - 1):
            self.last_eval = self.evaluator(self.strategy.evaluate_vec(self.global_vec))
            row["accuracy"], row["loss"] = self.last_eval
        row["round_wall"] = time.perf_counter() - t_round
        row["wall_time"] = self.totals["wall"] + time.perf_counter() - self.t0
        history = self.history + [{"round": rnd, "accepted": accepted}]
        if self.checkpoints:
            checkpoint.save(self.run_dir, {
                "round": rnd, "global": self.global_vec, "strategy": self.strategy.state_dict(),
                "clients": self.transport.state_dict(), "history": history, "config": to_dict(cfg),
                "totals": {**self.totals, "wall": row["wall_time"]}, "row": json.loads(json.dumps(row))}, kind=self.checkpoint_kind)
        # Only after the checkpoint commits does the round exist: logs follow it, never lead it.
        self.history = history
        self.rounds_done = rnd + 1
        with appending(self.writer.path, self.run_dir / ACCEPTED_LOG):   # full disk: no torn line
            self.writer.write(row)
            with (self.run_dir / ACCEPTED_LOG).open("a") as f:
                f.write(json.dumps({"round": rnd, "accepted": accepted}) + "\n")
        self.metrics.append(row)
        log.info("round %d closed: accepted %s in %.2fs acc=%s", rnd, accepted, round_time, row.get("accuracy"))
        return row


# -- run files ------------------------------------------------------------------------------------
CHECKPOINT_KEYS = ("round", "global", "strategy", "clients", "history", "config", "totals")


def checkpoint_kind(transport: Transport) -> str:
    """The command whose checkpoints these are: a simulated run's and a served run's do not mix."""
    return "simulate" if transport.clock == "virtual" else "server"


def load_resume_checkpoint(run_dir: Path, cfg: RunConfig, kind: str, *, checkpoints: bool = True) -> dict[str, Any] | None:
    """The checkpoint `--resume` continues from, verified (intact, this engine's, these settings),
    or None for a run that has not finished a round yet. CheckpointError (exit 2) otherwise; called
    before anything is written, so a refused resume leaves the run directory as it was."""
    ckpt = checkpoint.load(run_dir, kind=kind, required=CHECKPOINT_KEYS)
    path = Path(run_dir) / checkpoint.CHECKPOINT
    if ckpt is None:
        metrics = Path(run_dir) / "metrics.jsonl"
        if checkpoints and metrics.exists() and metrics.stat().st_size > 0:
            raise checkpoint.CheckpointError(path, "is missing, yet metrics.jsonl holds finished rounds "
                                                   "(was it deleted or moved?); refusing to restart from round 0")
        return None
    try:
        check_resume_config(ckpt.get("config"), to_dict(cfg))
    except ConfigError as e:            # the same line, naming the file
        detail = e.problem.removeprefix("the run directory was made with ")
        raise checkpoint.CheckpointError(path, f"was written by a run with {detail}", e.allowed) from None
    return ckpt


def check_resume_config(stored: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse to resume a run directory under different settings; names the fields that differ."""
    check_resume_settings(stored, current, RESUMABLE_CHANGES)


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [m["accuracy"] for m in metrics if m.get("accuracy") is not None]
    last = metrics[-1]
    return {
        "rounds": last["round"] + 1,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "time_s": last["time"],
        "wall_time_s": last["wall_time"],
        "bytes_up": last["cum_bytes_up"],
        "bytes_down": last["cum_bytes_down"],
        "straggler_events": sum(len(m["stragglers"]) for m in metrics),
        "dropped_clients": sum(len(m["dropped_clients"]) for m in metrics),
        "dropped_chunks": sum(m["dropped_chunks"] for m in metrics),
        "hole_chunks": sum(m["hole_chunks"] for m in metrics),
        "retransmitted_chunks": sum(m["retransmitted_chunks"] for m in metrics),
        "rejected_pushes": sum(m["rejected_pushes"] for m in metrics),
        # trust in aggregation (issue 23): the privacy spent so far, updates the norm bound refused
        **({"dp_epsilon": last["dp_epsilon"], "dp_delta": last["dp_delta"]} if "dp_epsilon" in last else {}),
        **({"norm_rejected": sum(m.get("norm_rejected", 0) for m in metrics)} if "norm_rejected" in last else {}),
    }


def results_table(summary: dict[str, Any], clock: str = "virtual", time_scale: float = 1.0) -> str:
    """The end-of-run table. A served run with `--time-scale X` reports time as wall time / X (the
    unscaled time of the emulated links), so its label says so."""
    from thinwire.metrics import format_table, human_bytes

    if clock == "virtual":
        label = "simulated"
    elif time_scale != 1.0:
        label = f"wall clock / time-scale {time_scale:g}"
    else:
        label = "wall clock"
    fmt = {
        "final_accuracy": lambda v: f"{v:.4f}", "best_accuracy": lambda v: f"{v:.4f}",
        "time_s": lambda v: f"{v:,.1f} s ({label})",
        "wall_time_s": lambda v: f"{v:,.1f} s", "bytes_up": human_bytes, "bytes_down": human_bytes,
    }
    rows = [(k, fmt.get(k, str)(v) if v is not None else "-") for k, v in summary.items()]
    return format_table(["metric", "value"], rows)
