"""Gradient codes (Tandon et al., ICML 2017): which partitions each worker combines and how the
master recovers the exact full gradient from any n - s of the n coded messages.

A code is an n x n matrix B: worker i sends sum_j B[i, j] * g_j over the n data partitions, and
from an arrival set I the master finds a with a^T B_I = 1^T, so sum_{i in I} a_i * msg_i =
sum_j g_j. Pure math (NumPy, float64); used by the sequential schemes in `sgc_schemes` and by the
server strategies. `s = 0` is the identity code, i.e. uncoded data parallelism.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

CODE_KINDS = ("cyclic", "fractional")


def cyclic_support(n: int, s: int, i: int) -> list[int]:
    """Partitions worker i stores under cyclic repetition: i, i+1, ..., i+s (mod n)."""
    return [(i + k) % n for k in range(s + 1)]


def cyclic_matrix(n: int, s: int, seed: int = 0) -> np.ndarray:
    """Tandon's cyclic-repetition code: rows supported on `cyclic_support`, all in null(H) for a
    random s x n Gaussian H with H 1 = 0, so any n - s rows span the all-ones vector (w.p. 1)."""
    _check(n, s)
    B = np.zeros((n, n))
    if s == 0:
        return np.eye(n)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, n, s, 7331])
    H = rng.standard_normal((s, n))
    H[:, -1] = -H[:, :-1].sum(axis=1)
    for i in range(n):
        others = cyclic_support(n, s, i)[1:]
        B[i, i] = 1.0
        B[i, others] = np.linalg.solve(H[:, others], -H[:, i])
    return B


def fractional_matrix(n: int, s: int) -> np.ndarray:
    """Fractional repetition: groups of s+1 workers hold the same s+1 partitions and send their sum."""
    _check(n, s)
    if n % (s + 1):
        raise ValueError(f"gc_s: fractional repetition needs (s+1) to divide n (n={n}, s={s})")
    g = np.arange(n) // (s + 1)
    return (g[:, None] == g[None, :]).astype(float)


def code_matrix(kind: str, n: int, s: int, seed: int = 0) -> np.ndarray:
    if kind == "cyclic":
        return cyclic_matrix(n, s, seed)
    if kind == "fractional":
        return fractional_matrix(n, s)
    raise ValueError(f"gc_code: unknown code {kind!r}; allowed: {', '.join(CODE_KINDS)}")


def _check(n: int, s: int) -> None:
    if n < 1 or not 0 <= s < n:
        raise ValueError(f"gc_s: need 0 <= s < n, got s={s}, n={n}")


def decode_coefficients(B: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a with a^T B[rows] = 1^T (least squares, float64); ValueError if the rows cannot decode."""
    rows = np.asarray(rows, dtype=np.int64)
    sub = B[rows]
    ones = np.ones(B.shape[1])
    a, *_ = np.linalg.lstsq(sub.T, ones, rcond=None)
    if len(rows):       # one step of iterative refinement: ill-conditioned arrival sets gain ~10x
        a += np.linalg.lstsq(sub.T, ones - a @ sub, rcond=None)[0]
    resid = np.abs(a @ sub - 1.0).max() if len(rows) else np.inf
    if not resid <= 1e-9 * max(1.0, np.abs(a).max()):
        raise ValueError(f"rows {rows.tolist()[:8]}... do not span the all-ones vector (residual {resid:.2e})")
    return a


@dataclass
class Decoder:
    """Decoding coefficients of one code, cached per arrival pattern (the set of rows used)."""
    B: np.ndarray
    tolerance: int                       # decodes from any n - tolerance distinct rows
    cache_size: int = 4096
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    hits: int = 0

    @property
    def n(self) -> int:
        return self.B.shape[0]

    @property
    def identity(self) -> bool:
        return self.tolerance == 0

    def needed(self) -> int:
        return self.n - self.tolerance

    def coefficients(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """(rows used, coefficients): the first n - s of `rows` (arrival order) and their a."""
        use = np.asarray(list(rows)[: self.needed()], dtype=np.int64)
        if len(use) < self.needed():
            raise ValueError(f"need {self.needed()} distinct rows to decode, have {len(use)}")
        if self.identity:
            return use, np.ones(len(use))
        key = tuple(sorted(use.tolist()))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            order = {r: k for k, r in enumerate(key)}
            return use, hit[[order[r] for r in use.tolist()]]
        srt = np.array(key, dtype=np.int64)
        a = decode_coefficients(self.B, srt)
        self._cache[key] = a
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        order = {r: k for k, r in enumerate(key)}
        return use, a[[order[r] for r in use.tolist()]]


def make_decoder(kind: str, n: int, s: int, seed: int = 0) -> Decoder:
    return Decoder(code_matrix(kind, n, s, seed), s)


# -- normalized loads (fraction of one full-job gradient computed per worker per round) ---------
def gc_load(n: int, s: int) -> float:
    return (s + 1) / n


def srsgc_s(B: int, W: int, lam: int) -> int:
    """The GC tolerance SR-SGC builds in: ceil(B * lambda / (W - 1 + B))."""
    return -(-B * lam // (W - 1 + B))


def srsgc_load(n: int, B: int, W: int, lam: int) -> float:
    return gc_load(n, srsgc_s(B, W, lam))


def msgc_d1_fraction(n: int, B: int, W: int, lam: int) -> float:
    """Share of a job's data in the uncoded D1 part: every minitask (D1 or D2) then costs the same."""
    if lam >= n:
        return 1.0
    return (lam + 1) * (W - 1) / (B + (lam + 1) * (W - 1))


def msgc_load(n: int, B: int, W: int, lam: int) -> float:
    if lam >= n:
        return (W - 1 + B) / (n * (W - 1))
    return (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))
