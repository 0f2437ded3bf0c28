"""Per-epoch checkpoints and `--resume` of the peer engines (`thinwire allreduce`, `thinwire decentralized`).

Both engines keep all state in their peers, so a lost peer ends the run (`PeerLost`); what makes
that cheap is a checkpoint after every epoch, written atomically through `thinwire.checkpoint`
(temp file, fsync, rename), holding everything needed to continue bit for bit: every rank's
optimiser state, the driver's counters and clock, and the metrics so far. This module holds what
both engines share: the checkpoint envelope (engine name, settings, epoch, step), reading it back
for `--resume` (refused, with the fields named, when the settings differ or the file belongs to
another engine), and the one-line "where it stopped" text of a peer failure.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Collection

from thinwire import checkpoint
from thinwire.errors import ConfigError
from thinwire.rundir import check_resume_settings

log = logging.getLogger(__name__)

FORMAT = 1
# Settings every peer engine may change on --resume: where the run lives and how it is watched.
WATCH_SETTINGS = frozenset({"name", "out_dir", "progress", "plots", "ray_address", "port", "peer_timeout"})


def save(run_dir: str | Path, engine: str, settings: dict[str, Any], *, epoch: int, step: int,
         body: dict[str, Any]) -> Path:
    """Atomically write RUN_DIR/checkpoint.pt for the end of `epoch` (global step `step`)."""
    state = {"engine": engine, "format": FORMAT, "config": dict(settings), "round": int(epoch),
             "epoch": int(epoch), "step": int(step), **body}
    return checkpoint.save(run_dir, state)


def read(run_dir: str | Path, engine: str, settings: dict[str, Any], may_change: Collection[str]) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None when the run has none yet (it starts at step 0).

    ConfigError on `resume` when the file is another engine's checkpoint or the run directory was
    made with other settings (only `may_change` may differ)."""
    ckpt = checkpoint.load(run_dir)
    if ckpt is None:
        log.warning("--resume: no checkpoint in %s yet (the first is written after epoch 1); starting at step 0",
                    run_dir)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("engine") != engine or ckpt.get("format") != FORMAT:
        if not isinstance(ckpt, dict):
            other = f"a {type(ckpt).__name__}"
        elif "engine" in ckpt:
            other = f"a thinwire {ckpt['engine']} checkpoint, format {ckpt.get('format')!r}"
        else:
            other = "a simulate/server checkpoint"
        raise ConfigError("resume", f"{Path(run_dir) / checkpoint.CHECKPOINT} is not a thinwire {engine} checkpoint "
                          f"of format {FORMAT} (it holds {other})", f"the run directory of a thinwire {engine} run")
    check_resume_settings(ckpt.get("config"), settings, may_change)
    return ckpt


def stopped_at(step: int, spe: int, epochs: int, saved_epoch: int | None, run_dir: str | Path) -> str:
    """The tail of a peer failure's one line: the last completed step and how to continue."""
    where = f"last completed step {step} (epoch {step / spe:.4g} of {epochs})"
    if saved_epoch is None:
        return f"{where}; no checkpoint yet (the first is written after epoch 1): start the run again"
    return f"{where}; checkpoint of epoch {saved_epoch} in {run_dir}: continue with --resume"


__all__ = ["FORMAT", "WATCH_SETTINGS", "save", "read", "stopped_at"]
