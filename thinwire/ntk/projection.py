"""Seeded Gaussian random projection P (d x d'), regenerated from a seed on both ends, never sent.

CP-NTK-FL clients upload J P instead of the Jacobian J (the d parameters shrink to d'), and the
update computed in the projected space is mapped back with P. Entries are i.i.d. N(0, 1/d'), so
E[P P^T] = I_d: inner products are preserved in expectation (Johnson-Lindenstrauss) and the
mapped-back update P P^T g is an unbiased estimate of g.

P is defined block by block: rows [b*BLOCK_ROWS, (b+1)*BLOCK_ROWS) come from their own generator
seeded with derive_seed(seed, "projection", b). That makes every block reproducible on its own, so
P can be applied without ever holding all d x d' entries (large models), and it is the same matrix
whichever way it is materialised. Lives in the core because client and server both rebuild it.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from thinwire.task import derive_seed

BLOCK_ROWS = 512                      # part of P's definition: changing it changes P
CACHE_LIMIT_BYTES = 256 * 1024 * 1024  # keep the whole of P in memory only below this size


class RandomProjection:
    """P in R^{d x d'} with i.i.d. N(0, 1/d') entries, defined by (seed, d, d')."""

    def __init__(self, seed: int, d: int, dim: int, cache_limit_bytes: int = CACHE_LIMIT_BYTES) -> None:
        if d < 1 or dim < 1:
            raise ValueError(f"projection: needs d >= 1 and dim >= 1, got d={d}, dim={dim}")
        self.seed, self.d, self.dim = int(seed), int(d), int(dim)
        self._cache: torch.Tensor | None = None
        self._cacheable = 4 * d * dim <= cache_limit_bytes

    def block(self, b: int) -> torch.Tensor:
        """Rows [b*BLOCK_ROWS, ...) of P, float32."""
        r0 = b * BLOCK_ROWS
        rows = min(BLOCK_ROWS, self.d - r0)
        if rows <= 0:
            raise IndexError(f"projection block {b} is past d={self.d}")
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "projection", b))
        return torch.randn(rows, self.dim, generator=gen).div_(math.sqrt(self.dim))

    def blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(row start, row end, block) over all of P, from the cache when it is held."""
        if self._cache is not None:
            for r0 in range(0, self.d, BLOCK_ROWS):
                r1 = min(self.d, r0 + BLOCK_ROWS)
                yield r0, r1, self._cache[r0:r1]
            return
        for b, r0 in enumerate(range(0, self.d, BLOCK_ROWS)):
            blk = self.block(b)
            yield r0, r0 + blk.shape[0], blk

    def matrix(self) -> torch.Tensor:
        """All of P (d x d'); cached when it is small enough to keep."""
        if self._cache is not None:
            return self._cache
        full = torch.cat([blk for _, _, blk in self.blocks()], dim=0)
        if self._cacheable:
            self._cache = full
        return full

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (..., d) -> rows @ P (..., d'), accumulated block by block when P is not held."""
        if rows.shape[-1] != self.d:
            raise ValueError(f"projection: rows have {rows.shape[-1]} columns, P has d={self.d} rows")
        flat = rows.reshape(-1, self.d).float()
        if self._cacheable:
            out = flat @ self.matrix()
        else:
            out = torch.zeros(flat.shape[0], self.dim)
            for r0, r1, blk in self.blocks():
                out.addmm_(flat[:, r0:r1], blk)
        return out.reshape(*rows.shape[:-1], self.dim)

    def back(self, v: torch.Tensor) -> torch.Tensor:
        """v (d',) -> P v (d,): a projected-space update mapped back to parameter space."""
        if v.shape != (self.dim,):
            raise ValueError(f"projection: expected a vector of {self.dim} entries, got shape {tuple(v.shape)}")
        v = v.float()
        if self._cacheable:
            return self.matrix() @ v
        return torch.cat([blk @ v for _, _, blk in self.blocks()])


def projection_seed(run_seed: int, rnd: int) -> int:
    """A fresh P every round: with one fixed P the model could only ever move inside a d'-dim span."""
    return derive_seed(run_seed, "ntk-projection", rnd)
