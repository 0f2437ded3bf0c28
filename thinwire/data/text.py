"""stdlib-text: next-character prediction on the Python standard library's own source files, a
text corpus every machine that runs thinwire already has (`sysconfig.get_paths()["stdlib"]`).

Clients are modules: each top-level `name.py` is one unit, each package directory (every `.py`
under it) another; test suites (`test`, `tests`, `idle_test`), `site-packages` and caches are left
out. With `partition="natural"` client k is one such unit, a natural non-IID split: modules differ
in size (a few hundred bytes to 1.4 MB), vocabulary (`encodings` tables vs `asyncio` prose) and
style. Which units become the K clients is a seeded draw among the eligible ones (at least
`MIN_BYTES` of source), so the same seed gives the same clients and windows. `partition="iid"`
pools the same windows and deals them evenly (for comparison).

Characters map to a fixed 97-symbol vocabulary: 0 = any other character (tabs, non-ASCII),
1 = newline, 2..96 = printable ASCII 32..126. Each unit's text is cut into non-overlapping windows
of `seq_len` characters; the input is a window, the labels are the same window shifted by one
(the next character at every position). A seeded `test_fraction` of every client's windows is held
out, and the global test set is a seeded sample of at most `test_windows` of those. Per client at
most `max_windows` training windows are kept (a seeded sample), which bounds memory and the
per-client work without changing who holds what.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import torch

from thinwire.data.federated import FederatedDataset
from thinwire.data.partition import describe, label_counts
from thinwire.errors import ConfigError, DataError

VOCAB_SIZE = 97
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})
MIN_BYTES = 4096

_TABLE = np.zeros(128, dtype=np.int64)
_TABLE[10] = 1
_TABLE[32:127] = np.arange(2, 97)


def encode_text(text: str) -> np.ndarray:
    """Character ids in 0..96 (see the module docstring)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(codes < 128, _TABLE[np.minimum(codes, 127)], 0)


def decode_ids(ids) -> str:
    """Inverse of `encode_text` (id 0 prints as '?')."""
    chars = ["?", "\n"] + [chr(c) for c in range(32, 127)]
    return "".join(chars[int(i)] for i in np.asarray(ids).reshape(-1))


def stdlib_units(root: str | Path | None = None) -> dict[str, list[Path]]:
    """unit name -> its source files (sorted), for every module and package of the standard library."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise DataError(f"{base}: the standard library's source directory is missing (stdlib-text reads it)")
    units: dict[str, list[Path]] = {}
    for entry in sorted(base.iterdir()):
        if entry.name in SKIP_DIRS or entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".py":
            units[entry.stem] = [entry]
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            files = sorted(f for f in entry.rglob("*.py")
                           if not SKIP_DIRS.intersection(f.relative_to(base).parts[:-1]))
            if files:
                units[entry.name] = files
    return units


def _unit_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


class StdlibTextDataset(FederatedDataset):
    """K clients, each a standard-library module or package (natural) or an even share (iid)."""

    targets = "next-token"

    def __init__(self, num_clients: int, *, partition: str = "natural", seed: int = 0, seq_len: int = 64,
                 max_windows: int = 256, test_fraction: float = 0.1, test_windows: int = 256,
                 root: str | Path | None = None):
        if partition not in ("natural", "iid"):
            raise ConfigError("partition", f"{partition!r} does not apply to stdlib-text (clients are modules)",
                              "natural, iid")
        units = stdlib_units(root)
        eligible = [n for n, files in units.items() if _unit_bytes(files) >= MIN_BYTES]
        if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) \
                or not 1 <= num_clients <= len(eligible):
            raise ConfigError("clients", f"{num_clients!r} clients but stdlib-text has {len(eligible)} modules "
                              f"of at least {MIN_BYTES} bytes", f"1..{len(eligible)}")
        self.name = "stdlib-text"
        self.num_clients = int(num_clients)
        self.num_classes = VOCAB_SIZE
        self.input_shape = (int(seq_len),)
        self.partition = partition
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 21])
        self.modules = [eligible[i] for i in np.sort(rng.choice(len(eligible), self.num_clients, replace=False))]
        xs, ys, owner, test_x, test_y = [], [], [], [], []
        for k, unit in enumerate(self.modules):
            text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in units[unit])
            ids = encode_text(text)
            n = (len(ids) - 1) // seq_len
            starts = np.arange(n) * seq_len
            win = ids[starts[:, None] + np.arange(seq_len + 1)]          # (n, T+1)
            perm = rng.permutation(n)
            n_test = max(1, int(round(n * test_fraction)))
            test, train = perm[:n_test], np.sort(perm[n_test:][:max_windows])
            xs.append(win[train, :-1])
            ys.append(win[train, 1:])
            owner.append(np.full(len(train), k))
            test_x.append(win[test, :-1])
            test_y.append(win[test, 1:])
        self.x_train = torch.from_numpy(np.concatenate(xs).astype(np.float32))
        self.y_train = torch.from_numpy(np.concatenate(ys))
        owner_all = np.concatenate(owner)
        if partition == "natural":
            self._parts = [np.flatnonzero(owner_all == k) for k in range(self.num_clients)]
        else:
            perm = rng.permutation(len(owner_all))
            self._parts = [np.sort(p) for p in np.array_split(perm, self.num_clients)]
        tx, ty = np.concatenate(test_x), np.concatenate(test_y)
        pick = np.sort(rng.permutation(len(tx))[:test_windows])
        self._test = (torch.from_numpy(tx[pick].astype(np.float32)), torch.from_numpy(ty[pick]))

    def client_indices(self, k: int) -> np.ndarray:
        """Indices of client k's windows into `x_train`."""
        return self._parts[self._check_client(k)]

    def client_module(self, k: int) -> str:
        """The standard-library unit client k's windows come from (natural partition)."""
        return self.modules[self._check_client(k)]

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.client_indices(k))
        return self.x_train[idx], self.y_train[idx]

    def client_size(self, k: int) -> int:
        return len(self._parts[self._check_client(k)])

    def client_sizes(self) -> np.ndarray:
        return np.array([len(p) for p in self._parts], dtype=np.int64)

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._test

    def summary(self) -> str:
        y = self.y_train.numpy()
        counts = np.stack([label_counts(y[p].reshape(-1), VOCAB_SIZE) for p in self._parts])
        scheme = "natural (one module per client)" if self.partition == "natural" else "iid (windows dealt evenly)"
        note = (f"samples are {self.input_shape[0]}-character windows, labels the next characters; 'classes' are the "
                f"{VOCAB_SIZE} vocabulary symbols; test set: {len(self._test[1])} windows; modules: "
                f"{', '.join(self.modules[:8])}{', ...' if self.num_clients > 8 else ''}")
        return describe(self.name, scheme, self.client_sizes(), counts, VOCAB_SIZE, note)

    def __repr__(self) -> str:
        return f"StdlibTextDataset(clients={self.num_clients}, partition={self.partition!r}, seed={self.seed})"
