"""The peer layer: K processes joined in one `torch.distributed` group, started as Ray actors.

Shared by every engine that trains without a parameter server (the compressed all-reduce of
`thinwire allreduce` and `thinwire bench ddp`, the decentralized engine): backend choice (NCCL when
every peer has a GPU, gloo otherwise), the rendezvous (loopback on one node, the rank-0 actor's
address across nodes), Ray start/attach and teardown, and a `call` that runs one method on every
rank and re-raises a worker's user error as itself.

A peer that dies (kill -9, OOM) or stops answering must not hang the run: `call` watches the
ranks' futures (`ray.wait` in one-second slices) instead of blocking on them. A rank whose actor
died ends the call at once; once any rank has failed the others get `FAILURE_GRACE_S` to
report, and once any rank has returned the others get `peer_timeout` seconds; ranks still silent
then are declared lost. The same `peer_timeout` is the process group's timeout, so survivors
blocked in a collective with a lost partner give up by themselves too. On a loss every actor is
killed at once (no graceful shutdown: survivors may be stuck in a collective) and `PeerLost`
(a one-line user error naming the ranks) is raised; the engines add the last completed
step and the checkpoint to resume from. The bound: a dead peer ends the call within about a
second; a silent one within peer_timeout + FAILURE_GRACE_S (its partners' collective times out
after peer_timeout, then the grace), 35 s at the default.

An engine subclasses `Peer` with its own methods and hands the class to `PeerGroup`.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
import time
import warnings
from typing import Any

import torch

from thinwire.config import check_choice, check_float, check_int
from thinwire.errors import ConfigError, UserError

BACKENDS = ("auto", "gloo", "nccl")
PEER_TIMEOUT_S = 30.0  # default --peer-timeout: a lost peer ends the run within about this long
PEERS_FILE = "peers.json"
FAILURE_GRACE_S = 5.0  # after one rank failed, how long the others get to report (Ray notices a death in < 1 s)


class PeerLost(UserError):
    """A rank of the group died or stopped answering: the run cannot continue without it.

    One line: which ranks, how, during what, plus `progress` (the engine's last completed
    step and the checkpoint to resume from)."""

    def __init__(self, ranks: list[int], world: int, reason: str, during: str, progress: str = "") -> None:
        self.ranks, self.world, self.reason, self.during = list(ranks), int(world), reason, during
        who = ", ".join(str(r) for r in self.ranks)
        msg = f"peer failure: rank{'s' if len(self.ranks) > 1 else ''} {who} of {world} lost during {during} ({reason})"
        super().__init__(msg + (f"; {progress}" if progress else ""))

    def with_progress(self, progress: str) -> "PeerLost":
        return PeerLost(self.ranks, self.world, self.reason, self.during, progress)


def check_peer_timeout(value: float, field: str = "peer_timeout") -> None:
    """--peer-timeout: seconds a rank may stay silent once another has finished (> 0, finite)."""
    check_float(field, value, 0.0, lo_open=True)


def is_comm_error(e: BaseException) -> bool:
    """A collective / point-to-point failure (a partner gone or timed out), not a bug in the step."""
    import torch.distributed as dist
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in ("gloo", "nccl", "connection", "timed out",
                                                                    "timeout", "broken pipe"))


def resolve_backend(backend: str, gpus: float, workers: int) -> str:
    """auto -> nccl when the cluster has a GPU per worker, else gloo; nccl without GPUs is an error."""
    check_choice("backend", backend, BACKENDS)
    enough = gpus >= workers and torch.distributed.is_nccl_available()
    if backend == "auto":
        return "nccl" if enough else "gloo"
    if backend == "nccl" and not enough:
        why = f"{int(gpus)} GPU(s) visible for {workers} worker(s)" if gpus < workers else \
            "this torch build has no NCCL"
        raise ConfigError("backend", f"nccl needs one GPU per worker, but {why}", "gloo, auto")
    return backend


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def loopback_ifname() -> str | None:
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return None
    for n in ("lo", "lo0"):
        if n in names:
            return n
    return None


def local_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def init_process_group(backend: str, init_method: str, rank: int, world: int, *, local: bool = True,
                       timeout_s: float = 120.0) -> None:
    """Join the default process group (gloo pinned to loopback when all ranks are on this node)."""
    import torch.distributed as dist
    if local and backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        ifname = loopback_ifname()
        if ifname:
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


class Peer:
    """One process-group rank; engines subclass it. Wrapped with `ray.remote` by `PeerGroup`."""

    def __init__(self, rank: int, world: int, backend: str, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.rank, self.world, self.backend = rank, world, backend
        self.device = torch.device("cpu")
        if backend == "nccl":
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so the local index is 0.
            torch.cuda.set_device(0)
            self.device = torch.device("cuda", 0)

    def identity(self) -> dict[str, Any]:
        """Where this rank runs: {rank, pid, node} (the driver writes them to RUN_DIR/peers.json)."""
        import ray
        return {"rank": self.rank, "pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def node_ip(self) -> str:
        import ray
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port("0.0.0.0")

    def init_group(self, init_method: str, local: bool, timeout_s: float = 120.0) -> int:
        init_process_group(self.backend, init_method, self.rank, self.world, local=local, timeout_s=timeout_s)
        return self.rank

    def shutdown(self) -> None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


class PeerGroup:
    """K Ray actors of a `Peer` subclass, joined in one process group."""

    def __init__(self, peer_cls: type, workers: int, backend: str = "auto", *, ray_address: str = "",
                 threads: int = 1, port: int = 0, peer_timeout: float = PEER_TIMEOUT_S) -> None:
        import ray
        check_int("workers", workers, 1)
        check_peer_timeout(peer_timeout)
        self.peer_timeout = float(peer_timeout)
        self.broken = False  # a rank was lost or failed: close() kills instead of shutting down
        check_choice("backend", backend, BACKENDS)
        if backend == "nccl" and not ray_address and not ray.is_initialized() and not torch.cuda.is_available():
            raise ConfigError("backend", "nccl needs one GPU per worker, but this machine has no CUDA GPU",
                              "gloo, auto")
        self._owns_ray = False
        if not ray.is_initialized():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                if ray_address:
                    ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING)
                else:
                    # "local": a fresh instance, never a `ray start` cluster that happens to run here
                    ray.init(address="local", num_cpus=local_cpus(), include_dashboard=False,
                             logging_level=logging.WARNING)
            self._owns_ray = True
        res = ray.cluster_resources()
        self.backend = resolve_backend(backend, float(res.get("GPU", 0.0)), workers)
        self.workers = workers
        cpus = float(res.get("CPU", 1.0))
        opts: dict[str, Any] = {"num_cpus": min(1.0, cpus / workers)}
        if self.backend == "nccl":
            opts["num_gpus"] = 1
        remote_cls = ray.remote(peer_cls)
        self.actors = [remote_cls.options(**opts).remote(r, workers, self.backend, threads) for r in range(workers)]
        try:
            # every process up before the rendezvous, so its timeout (= peer_timeout) only counts peers
            self.peers = ray.get([a.identity.remote() for a in self.actors])
            ip0 = self.peers[0]["node"]
            local = ip0 == ray.util.get_node_ip_address()
            if local:  # single node: rendezvous on loopback, port found by the driver
                host, p = "127.0.0.1", port or free_port("127.0.0.1")
            else:  # multi-node: the rank-0 actor's node IP and a port free there
                host, p = ip0, port or ray.get(self.actors[0].free_port.remote())
            self.call("init_group", f"tcp://{host}:{p}", local, self.peer_timeout)
        except Exception:
            self.close()
            raise

    def __enter__(self) -> "PeerGroup":
        return self

    @property
    def pids(self) -> list[int]:
        return [int(p["pid"]) for p in self.peers]

    def write_peers(self, run_dir: str | os.PathLike) -> None:
        """RUN_DIR/peers.json: rank -> pid and node of this run's peer processes (to find rank k's process)."""
        import json
        from pathlib import Path
        (Path(run_dir) / PEERS_FILE).write_text(json.dumps(self.peers, indent=1) + "\n")

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        import ray
        actors = getattr(self, "actors", [])
        if actors and not self.broken:
            try:  # graceful: every rank leaves the process group (bounded: a hung rank is killed below)
                ray.get([a.shutdown.remote() for a in actors], timeout=self.peer_timeout)
            except Exception:  # an actor that already died has nothing to shut down
                pass
        self._kill_all()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _kill_all(self) -> None:
        import ray
        for a in getattr(self, "actors", []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []

    def call_each(self, method: str, per_rank: list[tuple[Any, ...]]) -> list[Any]:
        """Like `call`, with rank r's own arguments per_rank[r] (e.g. its checkpointed state)."""
        if self.broken or len(per_rank) != len(getattr(self, "actors", [])):
            raise UserError(f"peer failure: cannot call {method} on a torn-down group of {self.workers}")
        return self.gather([getattr(a, method).remote(*args) for a, args in zip(self.actors, per_rank)], method)

    def call(self, method: str, *args: Any) -> list[Any]:
        """Call a method on every rank (collectives need all of them) and wait.

        A user error raised inside a worker (bad model factory, unreadable data) is re-raised as
        itself, so the CLI prints one line instead of a remote traceback. A rank that died or went
        silent raises `PeerLost` after the group was torn down (see the module docstring).
        """
        if self.broken or not getattr(self, "actors", None):
            raise UserError(f"peer failure: the group of {self.workers} was torn down after a lost rank; "
                            f"cannot call {method}")
        return self.gather([getattr(a, method).remote(*args) for a in self.actors], method)

    def gather(self, refs: list[Any], during: str) -> list[Any]:
        """Results of one future per rank, in rank order, without ever blocking on a lost rank."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError
        pending = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        died: list[int] = []
        failed: dict[int, BaseException] = {}
        deadline: float | None = None
        last_ready = 0.0
        while pending and not died:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait)
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except RayActorError:
                    died.append(rank)
                except RayTaskError as e:
                    failed[rank] = getattr(e, "cause", None) or e
            now = time.monotonic()
            if ready:
                last_ready = now
                grace = FAILURE_GRACE_S if failed else self.peer_timeout
                deadline = min(deadline, now + grace) if deadline is not None else now + grace
            if deadline is not None and now >= deadline:
                break
        if not died and not pending and not failed:
            return [results[r] for r in range(len(refs))]
        self.broken = True
        self._kill_all()  # survivors may sit in a collective with the lost rank: no graceful exit
        for ref in pending:  # consume the killed ranks' errors, so Ray does not print them at exit
            try:
                ray.get(ref, timeout=5)
            except Exception:
                pass
        if died:
            raise PeerLost(sorted(died), len(refs), "its process died" if len(died) == 1 else "their processes died",
                           during) from None
        for rank in sorted(failed):  # a worker's own error (bad input, a bug) says more than the hang it caused
            if isinstance(failed[rank], UserError) or not is_comm_error(failed[rank]):
                e = failed[rank]
                if isinstance(e, UserError):
                    raise e from None
                raise e
        if pending:
            silent = time.monotonic() - last_ready
            raise PeerLost(sorted(pending.values()), len(refs), f"no answer {silent:.0f} s after the other ranks "
                           f"had {'failed' if failed else 'finished'}; --peer-timeout {self.peer_timeout:g}",
                           during) from None
        first = str(failed[min(failed)]).strip().splitlines()
        raise PeerLost(sorted(failed), len(refs), "collective failed: " + (first[0][:160] if first else "?"),
                       during) from None


__all__ = ["BACKENDS", "PEER_TIMEOUT_S", "Peer", "PeerGroup", "PeerLost", "check_peer_timeout", "resolve_backend", "free_port", "loopback_ifname", "local_cpus",
           "init_process_group"]
