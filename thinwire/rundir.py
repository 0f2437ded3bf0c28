"""Where a run writes its files: one directory per run, never silently reused.

The policy, shared by every command that writes a run (simulate, server, allreduce, the Python API):

* no name (the default): a new directory OUT_DIR/COMMAND-YYYYmmdd-HHMMSS (suffix -2, -3, ... when
  two runs start in the same second), so repeated runs never overwrite each other;
* a name: OUT_DIR/NAME, which must not already hold a run (a metrics.jsonl, checkpoint or config
  file) unless `resume` (continue it from its checkpoint) or `force` (delete its files first);
  predictable paths for scripts, `make demo` (which passes --force) and compose (--resume);
* either way OUT_DIR/latest becomes a relative symlink to the run, so `thinwire plot runs/latest`
  shows the newest run.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
from pathlib import Path
from typing import Any, Collection, TypeVar

from thinwire.errors import ConfigError

T = TypeVar("T")

LATEST = "latest"
# Files whose presence means "a run was written here" (simulate/server/allreduce all write some).
RUN_MARKERS = ("metrics.jsonl", "checkpoint.pt", "config.toml", "config.json", "summary.json")



def make_dir(field: str, path: str | os.PathLike) -> Path:
    """Create directory `path` (and its parents) if missing; ConfigError naming `field` otherwise."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            what = "is" if parent == p else "is under"
            raise ConfigError(field, f"{str(p)!r} {what} the regular file {str(parent)!r}",
                              "a directory path (not a file, nor under one)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(field, f"cannot create directory {str(p)!r} ({e.strerror or e})",
                          "a writable directory path") from None
    return p

def check_run_name(name: str) -> None:
    """A run name is empty (automatic) or one path component other than '.', '..' and 'latest'."""
    if not isinstance(name, str):
        raise ConfigError("name", f"expected a string, got {name!r}")
    if name and ("/" in name or "\\" in name or name in (".", "..", LATEST)):
        raise ConfigError("name", f"bad run name {name!r}",
                          f"a directory name without '/', not '.', '..' or {LATEST!r} (empty = automatic)")


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def resolve_run_dir(out_dir: str | os.PathLike, name: str, *, command: str = "run", resume: bool = False,
                    force: bool = False, now: _dt.datetime | None = None) -> Path:
    """Create (if needed) and return the directory this run writes to; see the module docstring.

    Raises ConfigError naming `name` when a named directory already holds a run and neither
    `resume` nor `force` is set, when `resume` is asked without a name, or when `force` would
    delete a directory that is not a run directory. Calling it again with the returned
    directory's name is harmless (same directory, nothing deleted unless `force`).
    """
    check_run_name(name)
    if resume and force:
        raise ConfigError("force", "--force (start over) contradicts --resume (continue)", "one of them")
    root = make_dir("out_dir", out_dir)
    if not name:
        if resume:
            raise ConfigError("name", "--resume needs the name of the run to continue",
                              f"the --name of an earlier run in {str(root)!r}")
        run_dir = _new_unique_dir(root, command, now or _dt.datetime.now())
    else:
        run_dir = root / name
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError("name", f"{str(run_dir)!r} exists and is not a directory", "a new --name")
        if run_dir.is_dir() and not resume and any(run_dir.iterdir()):
            if not is_run_dir(run_dir):
                raise ConfigError("name", f"{str(run_dir)!r} holds files that are not a thinwire run",
                                  "a new --name or an empty directory")
            if not force:
                raise ConfigError("name", f"{str(run_dir)!r} already holds a run",
                                  "a new --name, --resume to continue it, or --force to overwrite it")
            for child in run_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
    _point_latest(root, run_dir.name)
    return run_dir


def in_run_dir(cfg: T, command: str, *, resume: bool = False, force: bool = False) -> T:
    """A copy of a run config (any dataclass with out_dir and name) pointing at its resolved run
    directory: what every command does before it starts an engine."""
    run_dir = resolve_run_dir(cfg.out_dir, cfg.name, command=command, resume=resume, force=force)
    return dataclasses.replace(cfg, out_dir=str(run_dir.parent), name=run_dir.name)


def check_resume_settings(stored: dict[str, Any] | None, current: dict[str, Any], may_change: Collection[str]) -> None:
    """Refuse to resume a run directory under different settings: a one-line ConfigError on
    `resume` naming the fields that differ (every command with --resume uses it)."""
    if stored is None:
        return
    diff = sorted(k for k in set(stored) | set(current) if k not in may_change and stored.get(k) != current.get(k))
    if diff:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in diff[:6])
        raise ConfigError("resume", f"the run directory was made with other settings ({detail}{', ...' if len(diff) > 6 else ''})",
                          "the same settings (only " + ", ".join(sorted(may_change)) + " may change), "
                          "or a new --name / out-dir")


def _new_unique_dir(root: Path, command: str, now: _dt.datetime) -> Path:
    stem = f"{command}-{now:%Y%m%d-%H%M%S}"
    for i in range(1, 10_000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()  # atomic: two runs starting together cannot get the same directory
            return path
        except FileExistsError:
            continue
    raise ConfigError("out_dir", f"too many runs named {stem}* in {str(root)!r}", "another --out-dir")


def _point_latest(root: Path, target: str) -> None:
    """Swap OUT_DIR/latest to `target` atomically; silently skipped where symlinks are unavailable."""
    link = root / LATEST
    tmp = root / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
