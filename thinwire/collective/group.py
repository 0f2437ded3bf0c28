"""The peer layer: K processes joined in one `torch.distributed` group, started as Ray actors.

Shared by every engine that trains without a parameter server (the compressed all-reduce of
`thinwire allreduce` and `thinwire bench ddp`, the decentralized engine): backend choice (NCCL when
every peer has a GPU, gloo otherwise), the rendezvous (loopback on one node, the rank-0 actor's
address across nodes), Ray start/attach and teardown, and a `call` that runs one method on every
rank and re-raises a worker's user error as itself.

An engine subclasses `Peer` with its own methods and hands the class to `PeerGroup`.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
import warnings
from typing import Any

import torch

from thinwire.config import check_choice, check_int
from thinwire.errors import ConfigError, UserError

BACKENDS = ("auto", "gloo", "nccl")


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
                 threads: int = 1, port: int = 0) -> None:
        import ray
        check_int("workers", workers, 1)
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
            ip0 = ray.get(self.actors[0].node_ip.remote())
            local = ip0 == ray.util.get_node_ip_address()
            if local:  # single node: rendezvous on loopback, port found by the driver
                host, p = "127.0.0.1", port or free_port("127.0.0.1")
            else:  # multi-node: the rank-0 actor's node IP and a port free there
                host, p = ip0, port or ray.get(self.actors[0].free_port.remote())
            ray.get([a.init_group.remote(f"tcp://{host}:{p}", local) for a in self.actors])
        except Exception:
            self.close()
            raise

    def __enter__(self) -> "PeerGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        import ray
        for a in getattr(self, "actors", []):
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # an actor that already died has nothing to shut down
                pass
            ray.kill(a)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def call(self, method: str, *args: Any) -> list[Any]:
        """Call a method on every rank (collectives need all of them) and wait.

        A user error raised inside a worker (bad model factory, unreadable data) is re-raised as
        itself, so the CLI prints one line instead of a remote traceback.
        """
        import ray
        try:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors])
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise cause from None
            raise


__all__ = ["BACKENDS", "Peer", "PeerGroup", "resolve_backend", "free_port", "loopback_ifname", "local_cpus",
           "init_process_group"]
