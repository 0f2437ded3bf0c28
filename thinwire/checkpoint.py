"""Atomic checkpoints: write to a temp file in the same directory, fsync, rename.

A crash at any moment leaves either the previous checkpoint or the new one, never a torn file;
`--resume` reloads the last one and continues from the next round.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from thinwire.faults.crash import crash_point

CHECKPOINT = "checkpoint.pt"


def save(run_dir: str | Path, state: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / CHECKPOINT
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        crash_point("mid_checkpoint", int(state.get("round", -1)))
        os.replace(tmp, final)
        dfd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return final


def load(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    # Our own file (never received over the network); weights_only keeps loading safe.
    return torch.load(path, map_location="cpu", weights_only=True)
