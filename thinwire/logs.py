"""Verbosity, set once by the CLI and shared with every process a run starts (Ray workers, actors).

`-v` shows INFO, `-vv` DEBUG plus the Ray workers' own logs. The level travels in the environment
(THINWIRE_VERBOSE), which local Ray workers inherit, so worker processes call `setup_from_env()`
and engines pass `ray_init_kwargs()` to `ray.init`.
"""
from __future__ import annotations

import logging
import os

ENV = "THINWIRE_VERBOSE"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def verbosity() -> int:
    try:
        return max(0, int(os.environ.get(ENV, "0")))
    except ValueError:
        return 0


def level(v: int) -> int:
    return logging.WARNING - 10 * min(max(v, 0), 2)


def setup(v: int) -> None:
    """Configure this process's logging for verbosity v and export it to child processes."""
    os.environ[ENV] = str(v)
    logging.basicConfig(level=level(v), format=FORMAT)


def setup_from_env() -> None:
    """In a worker process: the driver's verbosity (no-op at the default level)."""
    v = verbosity()
    if v:
        logging.basicConfig(level=level(v), format=FORMAT)
        logging.getLogger().setLevel(level(v))


def ray_init_kwargs() -> dict:
    """ray.init arguments: worker stdout/stderr reach the driver only at -vv."""
    v = verbosity()
    return {"log_to_driver": v >= 2, "logging_level": logging.DEBUG if v >= 2 else logging.WARNING}
