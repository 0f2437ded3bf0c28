"""Client state store: per-client state (error-feedback residuals, DEF points, task kinds' own
state) kept outside the actors, so any worker actor can run any virtual client, and, file-backed,
in bounded RAM: 1,000 stateful clients x 11M parameters is 44 GB of fp32 residuals (issue 21).

Two backends behind one interface (`get`, `put`, `state_dict`, `load_state_dict`):
- memory: the state dicts themselves (small models; the checkpoint embeds them).
- files: every tensor of a client's state goes into one file per client under `root`; RAM holds
  only a small skeleton per client (the state with each tensor replaced by a reference: dtype,
  shape, offset). A `get` reads the client's tensors back (exact bytes; fp32 stays fp32), so
  memory is what the clients of one round hold, whatever the fleet size. Plain `read`/`write`
  (no mmap): the page cache the kernel keeps is not the process's RSS and is given back under
  pressure. With `dtype="float16"` float32 tensors are stored as float16 (half the disk and I/O,
  relative error <= 2**-11 per coordinate for values in fp16's normal range; `thinwire bench
  store` measures it) and come back as float32.

Checkpoints stay exact and atomic without copying 44 GB: files are never rewritten. A `put`
writes the client's state to a new file (a per-store token and a generation in its name) and
deletes the old one unless a snapshot still names it. `state_dict` (called by the round engine
right before it writes the checkpoint) fsyncs the files written since the last one and returns a
snapshot: the skeletons and file names. The files a snapshot names are kept until the snapshot
after next, by which time the checkpoint that names them has been replaced (rounds checkpoint in
order), so a crash at any point leaves the last committed checkpoint's files on disk.
`load_state_dict` adopts a snapshot (its files must exist under `root`) and removes every other
state file there; it also takes the older in-memory form (a dict of state dicts).
"""
from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from thinwire.client.runtime import ClientState
from thinwire.config import STATE_DTYPES
from thinwire.config import STATE_STORES as STORES
from thinwire.errors import UserError

FORMAT = "thinwire-client-state-files-1"
_SUFFIX = ".state"
_REF = "__stored_tensor__"


class ClientStateStore:
    """Per-client state by client id; `root` None keeps it in memory, else in files under root."""

    def __init__(self, root: str | os.PathLike | None = None, *, dtype: str = "float32") -> None:
        if dtype not in STATE_DTYPES:
            raise ValueError(f"dtype: {dtype!r}; allowed: {', '.join(STATE_DTYPES)}")
        self.dtype = dtype
        self.root = None if root is None else Path(root)
        self._states: dict[int, dict[str, Any]] = {}            # memory backend
        self._index: dict[int, tuple[str, Any]] = {}           # files backend: id -> (file, skeleton)
        self._token = secrets.token_hex(4)
        self._gen = itertools.count(1)
        self._dirty: set[str] = set()                           # written since the last snapshot
        self._pinned: set[str] = set()                          # named by the last snapshot
        self._prev_pinned: set[str] = set()                     # ... and by the one before it
        self.bytes_written = self.bytes_read = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(cls, cfg: Any) -> ClientStateStore:
        """The store a run's config asks for: files under RUN_DIR/client-state, or memory."""
        kind = getattr(cfg, "state_store", "files")
        dtype = getattr(cfg, "state_dtype", "float32")
        return cls(Path(cfg.run_dir) / "client-state" if kind == "files" else None, dtype=dtype)

    @property
    def file_backed(self) -> bool:
        return self.root is not None

    def __len__(self) -> int:
        return len(self._index) if self.file_backed else len(self._states)

    # -- get / put ---------------------------------------------------------------------------------
    def get(self, client_id: int) -> ClientState | None:
        if not self.file_backed:
            s = self._states.get(client_id)
            return None if s is None else ClientState(**s)
        entry = self._index.get(client_id)
        if entry is None:
            return None
        name, skeleton = entry
        assert self.root is not None
        with open(self.root / name, "rb", buffering=0) as f:
            return ClientState(**_fill(skeleton, f, self))

    def put(self, client_id: int, state: ClientState) -> None:
        if state.empty:
            return
        if not self.file_backed:
            self._states[client_id] = asdict(state)
            return
        assert self.root is not None
        name = f"c{int(client_id)}-{self._token}-{next(self._gen)}{_SUFFIX}"
        tensors: list[torch.Tensor] = []
        skeleton = _strip(asdict(state), tensors, self.dtype)
        with open(self.root / name, "wb", buffering=0) as f:
            for t in tensors:
                n = _write_all(f, _as_bytes(t))
                self.bytes_written += n
        self._dirty.add(name)
        old = self._index.get(client_id)
        self._index[client_id] = (name, skeleton)
        if old is not None:
            self._discard(old[0])

    def _discard(self, name: str) -> None:
        if name in self._pinned or name in self._prev_pinned:
            return                                   # a committed checkpoint may still name it
        self._dirty.discard(name)
        assert self.root is not None
        try:
            os.unlink(self.root / name)
        except FileNotFoundError:
            pass

    # -- checkpoint ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[Any, Any]:
        if not self.file_backed:
            return dict(self._states)
        assert self.root is not None
        for name in sorted(self._dirty):             # durable before the checkpoint names them
            fd = os.open(self.root / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dirty.clear()
        _fsync_dir(self.root)
        self._prev_pinned, self._pinned = self._pinned, {name for name, _ in self._index.values()}
        self._collect()
        return {"format": FORMAT, "dtype": self.dtype,
                "clients": {int(c): {"file": n, "state": s} for c, (n, s) in self._index.items()}}

    def load_state_dict(self, state: dict[Any, Any]) -> None:
        if state.get("format") == FORMAT:
            if not self.file_backed:
                raise UserError("state: this checkpoint keeps client state in files; resume it with "
                                "state_store: files (got memory)")
            assert self.root is not None
            index = {int(c): (str(v["file"]), v["state"]) for c, v in state["clients"].items()}
            missing = [n for n, _ in index.values() if not (self.root / n).is_file()]
            if missing:
                raise UserError(f"state: {len(missing)} client state file(s) missing under {self.root} "
                                f"(e.g. {missing[0]}); the checkpoint cannot be resumed without them")
            self._index = index
            self._pinned, self._prev_pinned = {n for n, _ in index.values()}, set()
            self._dirty.clear()
            self._collect()
            return
        legacy = {int(k): v for k, v in state.items()}      # in-memory form: {id: state dict}
        if not self.file_backed:
            self._states = legacy
            return
        self._index = {}
        for cid, s in legacy.items():
            self.put(cid, ClientState(**s))

    def _collect(self) -> None:
        """Remove state files under root that neither the live index nor a kept snapshot names."""
        assert self.root is not None
        keep = {n for n, _ in self._index.values()} | self._pinned | self._prev_pinned
        for p in self.root.glob(f"*{_SUFFIX}"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                self._dirty.discard(p.name)

    def disk_bytes(self) -> int:
        """Bytes of state files under root now (0 for the memory backend)."""
        if not self.file_backed:
            return 0
        assert self.root is not None
        return sum(p.stat().st_size for p in self.root.glob(f"*{_SUFFIX}"))


# -- tensors out of / back into a state ------------------------------------------------------------
def _strip(obj: Any, tensors: list[torch.Tensor], dtype: str) -> Any:
    """The state with each tensor replaced by a reference; the tensors (as stored) appended in order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        stored = t.to(torch.float16) if (dtype == "float16" and t.dtype == torch.float32) else t
        stored = stored.contiguous()
        tensors.append(stored)
        return {_REF: len(tensors) - 1, "dtype": str(t.dtype).removeprefix("torch."),
                "stored": str(stored.dtype).removeprefix("torch."), "shape": list(t.shape)}
    if isinstance(obj, dict):
        return {k: _strip(v, tensors, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(v, tensors, dtype) for v in obj)
    return obj


def _fill(obj: Any, f: Any, store: ClientStateStore) -> Any:
    """Inverse of `_strip`: read the referenced tensors from `f`, in order (the file's layout)."""
    if isinstance(obj, dict):
        if _REF in obj:
            stored = torch.empty(obj["shape"], dtype=getattr(torch, obj["stored"]))
            n = stored.numel() * stored.element_size()
            if n:
                got = f.readinto(memoryview(stored.view(-1).view(torch.uint8).numpy()))
                while got < n:                       # a raw file may return short reads
                    more = f.readinto(memoryview(stored.view(-1).view(torch.uint8).numpy())[got:])
                    if not more:
                        raise ValueError(f"client state file {f.name}: truncated ({got} of {n} bytes)")
                    got += more
            store.bytes_read += n
            want = getattr(torch, obj["dtype"])
            return stored if stored.dtype == want else stored.to(want)
        return {k: _fill(v, f, store) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, f, store) for v in obj)
    return obj


def _as_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.view(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _write_all(f: Any, buf: memoryview) -> int:
    done = 0
    while done < len(buf):
        done += f.write(buf[done:])
    return done


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["STATE_DTYPES", "STORES", "ClientStateStore"]
