"""The CP-NTK-FL shuffler: per-sample rows from many clients in, one permuted pool out.

In the paper a separate shuffling server permutes the clients' per-sample messages (projected
Jacobian rows, labels, outputs) across clients before the aggregation server sees them, so the
server cannot tell which sample came from which client. Here the shuffler is an in-process object
that the NTK strategy hands every accepted upload to and gets rows back from only as one pooled,
seeded-permuted set: the strategy keeps no client ids next to rows, its metrics and checkpoints
hold none. In simulate and in served mode it runs inside the server process, so it hides the link
from the aggregation code and its outputs, not from whoever operates the server process (a
separate shuffler role on its own host is not built). The pooled math (kernel, sums over samples)
is permutation-equivariant, so shuffling never changes the update, only who can link rows.
"""
from __future__ import annotations

import torch

from thinwire.task import derive_seed


class Shuffler:
    """Collect named per-sample tensors (same leading size per upload); release them pooled."""

    def __init__(self, seed: int, permute: bool = True) -> None:
        self.seed = int(seed)
        self.permute = permute
        self._parts: list[dict[str, torch.Tensor]] = []
        self.rows = 0

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        sizes = {t.shape[0] for t in rows.values()}
        if len(sizes) != 1:
            raise ValueError(f"shuffler: tensors of one upload disagree on the number of samples: "
                             f"{ {k: tuple(t.shape) for k, t in rows.items()} }")
        if self._parts and set(rows) != set(self._parts[0]):
            raise ValueError(f"shuffler: upload has tensors {sorted(rows)}, expected {sorted(self._parts[0])}")
        self._parts.append(dict(rows))
        self.rows += sizes.pop()

    def release(self, tag: int = 0) -> dict[str, torch.Tensor]:
        """All rows so far, concatenated and (with permute) shuffled across uploads with the
        permutation seeded by (seed, tag), e.g. tag = the round; then empty."""
        if not self._parts:
            return {}
        names = list(self._parts[0])
        pooled = {k: torch.cat([p[k] for p in self._parts]) for k in names}
        if self.permute:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", tag))
            perm = torch.randperm(self.rows, generator=gen)
            pooled = {k: t[perm] for k, t in pooled.items()}
        self._parts, self.rows = [], 0
        return pooled
