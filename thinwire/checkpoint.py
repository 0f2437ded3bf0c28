"""Atomic, self-checking checkpoints: write to a temp file in the same directory, fsync, rename;
load only what verifiably is the checkpoint this run wrote.

A crash at any moment leaves either the previous checkpoint or the new one, never a torn file; a
full disk removes the temp file and leaves the previous checkpoint as it was (DiskFull, one line).
`--resume` reloads the last one and continues from the next round.

The file stays a plain `torch.save` zip (`torch.load(path, weights_only=True)` reads it), with one
extra key, META: the format, the kind of run that wrote it (the command: simulate, server,
allreduce, ...) and a SHA-256 over the contents (every tensor's bytes, dtype and shape, every
plain value). `load` turns each way a file can be wrong into a CheckpointError (a ConfigError with
field "resume", exit 2 from the CLI) naming the file and the problem:

* truncated: the zip does not end in its end-of-central-directory record, or torch cannot read it;
* corrupt: torch cannot read it, or the contents do not match their SHA-256 (bytes flipped);
* another engine's: META names another kind, or keys the caller requires are missing;
* not a thinwire checkpoint: not a dict, no META (a plain torch file; its META key damaged), or
  holds objects that are not tensors / plain values.

Whether the settings match (another run's checkpoint of the same engine) is the caller's check:
the round engine compares the stored config (thinwire.server.rounds.check_resume_config).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from thinwire.errors import ConfigError
from thinwire.faults.crash import crash_point
from thinwire.rundir import DiskFull, is_out_of_space

CHECKPOINT = "checkpoint.pt"
META = "thinwire_checkpoint"          # the key holding {"format", "kind", "sha256"} in the file
FORMAT = 1
_TEMP_PREFIX = ".ckpt-"
_EOCD = b"PK\x05\x06"                 # a zip ends with this 22-byte record (no archive comment)


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be resumed from; names the file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike, problem: str, allowed: str | None = None) -> None:
        self.path = Path(path)
        super().__init__("resume", f"checkpoint {str(self.path)!r} {problem}",
                         allowed or "the checkpoint.pt this run wrote (or start over: a new --name, or --force)")


def save(run_dir: str | os.PathLike, state: dict[str, Any], *, kind: str = "") -> Path:
    """Write RUN_DIR/checkpoint.pt atomically; `kind` names the command whose run it is.
    Raises DiskFull (one line; the previous checkpoint intact, no temp file left) when the disk is full."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / CHECKPOINT
    body = {k: v for k, v in state.items() if k != META}
    body[META] = {"format": FORMAT, "kind": kind, "sha256": content_digest(body)}
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(body, f)
            f.flush()
            os.fsync(f.fileno())
        crash_point("mid_checkpoint", int(state.get("round", -1)))
        os.replace(tmp, final)
        dfd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_out_of_space(e):
            prev = "the previous checkpoint is intact" if final.exists() else "no earlier checkpoint exists"
            raise DiskFull(final, f"while writing the checkpoint; {prev}") from None
        raise
    _remove_stale_temps(run_dir)
    return final


def load(run_dir: str | os.PathLike, *, kind: str | None = None, required: Iterable[str] = ()) -> dict[str, Any] | None:
    """RUN_DIR/checkpoint.pt as saved (without META), or None when there is none.

    Raises CheckpointError when the file is truncated, corrupt, not a thinwire checkpoint (no
    META: also files of thinwire before issue 24), was written by another kind of run than `kind`
    (when both name one) or lacks a `required` key."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 22))
            tail = f.read(22)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise CheckpointError(path, "is empty (0 bytes; truncated)")
    if len(tail) < 22 or not tail.startswith(_EOCD) or tail[20:22] != b"\x00\x00":
        raise CheckpointError(path, f"is truncated or corrupt (its {size} bytes do not end a torch zip archive)")
    try:
        # Our own file (never received over the network); weights_only keeps loading safe.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:     # torch raises RuntimeError / UnpicklingError / EOFError / ... for bad bytes
        if "Weights only load failed" in str(e) and "Unsupported global" in str(e):
            raise CheckpointError(path, "is not a thinwire checkpoint (it holds Python objects, not only tensors "
                                        "and plain values)") from None
        raise CheckpointError(path, f"is truncated or corrupt (torch cannot load it: {_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"is not a thinwire checkpoint (it holds a {type(obj).__name__}, not a dict)")
    meta = obj.pop(META, None)
    if meta is None:       # also what a flipped byte in META's own key looks like: never load unverified
        raise CheckpointError(path, f"is not a thinwire checkpoint, or its header is damaged (no {META!r} record "
                                    "with its checksum)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(path, f"has an unknown checkpoint format ({str(meta)[:80]}; this thinwire reads format {FORMAT})")
    if meta.get("sha256") != content_digest(obj):
        raise CheckpointError(path, "is corrupt (its contents do not match their SHA-256: bytes were changed)")
    written_by = meta.get("kind") or ""
    if kind and written_by and written_by != kind:
        raise CheckpointError(path, f"was written by `thinwire {written_by}`, not `thinwire {kind}` "
                                    "(a checkpoint of another engine)")
    missing = [k for k in required if k not in obj]
    if missing:
        what = f"a `thinwire {kind}` checkpoint" if kind else "the checkpoint this run expects"
        raise CheckpointError(path, f"is not {what} (it lacks {', '.join(missing)})")
    return obj


def content_digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's contents: tensors by dtype, shape and bytes, containers in order,
    plain values by type and repr. Equal for a state and the same state loaded back."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, v: Any) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(v, dict):
        h.update(f"D{len(v)}|".encode())
        for k, x in v.items():
            _feed(h, k)
            _feed(h, x)
    elif isinstance(v, (list, tuple)):
        h.update(f"{'L' if isinstance(v, list) else 'U'}{len(v)}|".encode())
        for x in v:
            _feed(h, x)
    elif isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}|".encode() + b)
    elif isinstance(v, (bytes, bytearray)):
        h.update(f"B{len(v)}|".encode() + bytes(v))
    else:                                   # None, bool, int, float, dtype, ...: type + exact repr
        r = repr(v).encode()
        h.update(f"V{type(v).__name__}{len(r)}|".encode() + r)


def _remove_stale_temps(run_dir: Path) -> None:
    """Temp files of checkpoints killed before their rename (kill -9 mid-save) take disk space."""
    for p in run_dir.glob(_TEMP_PREFIX + "*"):
        try:
            p.unlink()
        except OSError:
            pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."
