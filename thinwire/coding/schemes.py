"""Sequential gradient coding schemes as explicit master state (Krishnan, Ebrahimi & Khisti, ICLR 2023).

One object per run decides, round by round, which unit of work each worker computes (`plan`),
whether a round's straggler set can be tolerated (`tolerable`), folds in what arrived (`record`)
and says when and how a job decodes (`decodable`, `decode`). The same objects drive the virtual-
clock runtime simulator (`sgc_runtime`) and the server strategies, so there is one implementation.

A job's data (the full-job batch) is split into code groups (see `layout_bounds`); a unit is
(job, group, row): the worker sends sum_j B_g[row, j] * g_j over group g's partitions. Schemes:
- uncoded: GC with s = 0 (identity code), tolerates nothing, waits for all;
- gc: one (n, s) code per job, any s stragglers per round, T = 0;
- sr-sgc (B, W, lambda): GC with s = ceil(B lambda / (W-1+B)); in round r, if v > s workers did not
  deliver job r-B, v-s of them (lowest ids) repeat their job r-B row instead of job r; T = B;
- m-sgc (B, W, lambda): D1 = uncoded pieces (W-1 minitasks per worker), D2 = B groups each with an
  (n, lambda) code; slot m of round r works on job r-m; a D2 slot redoes a missing D1 minitask of
  the same worker first; T = W-2+B.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thinwire.faults.stragglers import bursty_conforms

from thinwire.coding.matrices import Decoder, code_matrix, gc_load, msgc_d1_fraction, msgc_load, srsgc_s

SCHEMES = ("uncoded", "gc", "sr-sgc", "m-sgc")


@dataclass
class Plan:
    """Work of one round: (worker x slot) arrays; job -1 = idle slot."""
    round: int
    job: np.ndarray
    group: np.ndarray
    row: np.ndarray


@dataclass
class GroupSpec:
    rows: int            # rows of the group's code (== its partitions)
    tolerance: int       # decodes from any rows - tolerance distinct rows
    kind: str            # "identity" or a gradient_coding code kind


class _JobBook:
    """What has arrived for one job: per group, which rows, in what order, from which (round, worker, slot)."""

    def __init__(self, groups: list[GroupSpec]) -> None:
        self.have = [np.zeros(g.rows, dtype=bool) for g in groups]
        self.seq = [np.full(g.rows, -1, dtype=np.int64) for g in groups]
        self.src = [np.full((g.rows, 3), -1, dtype=np.int64) for g in groups]
        self.count = [0] * len(groups)

    def copy(self) -> "_JobBook":
        c = object.__new__(_JobBook)
        c.have = [h.copy() for h in self.have]
        c.seq, c.src = self.seq, self.src      # not written by dry runs
        c.count = list(self.count)
        return c


class Scheme:
    """Base: one-slot GC-style schemes share everything but the plan and the model check."""

    name = "base"

    def __init__(self, n: int, n_jobs: int, groups: list[GroupSpec], slots: int, T: int, load: float,
                 seed: int = 0, code: str = "cyclic") -> None:
        self.n, self.n_jobs, self.groups, self.slots, self.T, self.load = n, n_jobs, groups, slots, T, load
        self.seed, self.code = seed, code
        self.books: dict[int, _JobBook] = {}
        self.decoded: dict[int, int] = {}          # job -> round at whose end it decoded
        self.hist = np.zeros((n, 0), dtype=bool)   # stragglers of accepted rounds (waits: none), last cols
        self._seq = 0
        self._decoders: dict[int, Decoder] = {}
        self.fallbacks = 0                          # model said yes but the due job would not decode

    # -- the round ---------------------------------------------------------------------------
    def plan(self, r: int) -> Plan:
        raise NotImplementedError

    def model_ok(self, r: int, stragglers: np.ndarray) -> bool:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def tolerable(self, r: int, plan: Plan, stragglers: np.ndarray) -> bool:
        """Close the round without the stragglers? The straggler model must allow it and (a safety
        net the theorems make redundant under the model) the job due this round must decode."""
        if not stragglers.any():
            return True
        if not self.model_ok(r, stragglers):
            return False
        due = r - self.T
        if 0 <= due < self.n_jobs and due not in self.decoded:
            book = self._book(due).copy()
            self._apply(book, due, plan, ~stragglers, None, dry=True)
            if not self._complete(book):
                self.fallbacks += 1
                return False
        return True

    def record(self, plan: Plan, received: np.ndarray, order: np.ndarray | None = None,
               stragglers: np.ndarray | None = None) -> list[int]:
        """Fold in the units of the workers in `received` (bool per worker), in arrival `order`
        (worker ids; default by id); `stragglers` is what the model saw (default: ~received).
        Returns the jobs that became decodable this round."""
        r = plan.round
        strag = ~received if stragglers is None else stragglers
        self._note_round(plan, strag)
        keep = self._window() - 1
        if keep > 0:
            self.hist = np.concatenate([self.hist, strag[:, None]], axis=1)[:, -keep:]
        jobs = np.unique(plan.job[received][plan.job[received] >= 0])
        for t in jobs.tolist():
            if t in self.decoded:
                continue
            self._apply(self._book(t), t, plan, received, order, dry=False)
        newly = []
        for t in sorted(self.books):
            if t not in self.decoded and self._complete(self.books[t]):
                self.decoded[t] = r
                newly.append(t)
        due = r - self.T
        if 0 <= due < self.n_jobs and due not in self.decoded:
            raise RuntimeError(f"{self.name}: job {due} is not decodable at the end of round {r} (deadline)")
        return newly

    def _window(self) -> int:
        return 1

    def _note_round(self, plan: Plan, strag: np.ndarray) -> None:
        pass

    # -- bookkeeping ---------------------------------------------------------------------------
    def _book(self, t: int) -> _JobBook:
        b = self.books.get(t)
        if b is None:
            b = self.books[t] = _JobBook(self.groups)
        return b

    def _apply(self, book: _JobBook, t: int, plan: Plan, received: np.ndarray, order, dry: bool) -> None:
        workers = np.arange(self.n) if order is None else np.asarray(order, dtype=np.int64)
        workers = workers[received[workers]]
        for m in range(self.slots):
            sel = workers[plan.job[workers, m] == t]
            if not len(sel):
                continue
            gs, rows = plan.group[sel, m], plan.row[sel, m]
            for g in np.unique(gs).tolist():
                k = gs == g
                rr, ww = rows[k], sel[k]
                new = ~book.have[g][rr]
                rr, ww = rr[new], ww[new]
                book.have[g][rr] = True
                book.count[g] += len(rr)
                if not dry:
                    book.seq[g][rr] = self._seq + np.arange(len(rr))
                    self._seq += len(rr)
                    book.src[g][rr] = np.stack([np.full(len(rr), plan.round), ww, np.full(len(rr), m)], axis=1)

    def _complete(self, book: _JobBook) -> bool:
        return all(c >= g.rows - g.tolerance for c, g in zip(book.count, self.groups))

    def decodable(self, t: int) -> bool:
        return t in self.decoded or (t in self.books and self._complete(self.books[t]))

    def decoder(self, g: int) -> Decoder:
        d = self._decoders.get(g)
        if d is None:
            spec = self.groups[g]
            B = np.eye(spec.rows) if spec.kind == "identity" else code_matrix(spec.kind, spec.rows, spec.tolerance,
                                                                             self.seed + g)
            d = self._decoders[g] = Decoder(B, spec.tolerance)
        return d

    def decode(self, t: int) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """For each group: (group, rows used, coefficients, sources (round, worker, slot) per row),
        the first rows - tolerance arrivals; sum coef * message over all groups = the job's gradient."""
        book = self.books[t]
        out = []
        for g in range(len(self.groups)):
            rows = np.flatnonzero(book.have[g])
            rows = rows[np.argsort(book.seq[g][rows], kind="stable")]
            use, a = self.decoder(g).coefficients(rows)
            out.append((g, use, a, book.src[g][use]))
        return out

    def release(self, t: int) -> None:
        self.books.pop(t, None)

    # -- checkpoints (tensors and plain values only: they are loaded with weights_only) -----------
    def state_dict(self) -> dict:
        import torch

        def arrs(xs):
            return [torch.from_numpy(np.array(x)) for x in xs]
        books = {int(t): {"have": arrs(b.have), "seq": arrs(b.seq), "src": arrs(b.src), "count": list(b.count)}
                 for t, b in self.books.items()}
        return {"books": books, "decoded": dict(self.decoded), "hist": torch.from_numpy(self.hist.copy()),
                "seq": self._seq, "fallbacks": self.fallbacks, "extra": self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.books = {}
        for t, b in state["books"].items():
            book = _JobBook(self.groups)
            book.have = [x.numpy().copy() for x in b["have"]]
            book.seq = [x.numpy().copy() for x in b["seq"]]
            book.src = [x.numpy().copy() for x in b["src"]]
            book.count = list(b["count"])
            self.books[int(t)] = book
        self.decoded = {int(k): int(v) for k, v in state["decoded"].items()}
        self.hist = state["hist"].numpy().copy()
        self._seq, self.fallbacks = int(state["seq"]), int(state["fallbacks"])
        self._load_extra_state(state["extra"])

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass


# -- the four schemes ----------------------------------------------------------------------------
class GC(Scheme):
    """Tandon et al. gradient coding (cyclic or fractional repetition); s = 0 is uncoded."""
    name = "gc"

    def __init__(self, n: int, n_jobs: int, s: int, seed: int = 0, code: str = "cyclic") -> None:
        kind = "identity" if s == 0 else code
        super().__init__(n, n_jobs, [GroupSpec(n, s, kind)], 1, 0, gc_load(n, s), seed, code)
        self.s = s

    def params(self) -> dict:
        return {"s": self.s}

    def plan(self, r: int) -> Plan:
        job = np.full((self.n, 1), r if r < self.n_jobs else -1)
        return Plan(r, job, np.zeros((self.n, 1), np.int64), np.arange(self.n)[:, None].copy())

    def model_ok(self, r: int, stragglers: np.ndarray) -> bool:
        return int(stragglers.sum()) <= self.s


class Uncoded(GC):
    name = "uncoded"

    def __init__(self, n: int, n_jobs: int, seed: int = 0) -> None:
        super().__init__(n, n_jobs, 0, seed)

    def params(self) -> dict:
        return {}


class SRSGC(Scheme):
    """GC + selective repetition of job r-B's undelivered rows (delay T = B)."""
    name = "sr-sgc"

    def __init__(self, n: int, n_jobs: int, B: int, W: int, lam: int, seed: int = 0, code: str = "cyclic",
                 exempt: bool = True) -> None:
        if B < 1 or W < B + 1 or (W - 1) % B or not 1 <= lam <= n:
            raise ValueError(f"sr-sgc: need B >= 1, W = B+1, 2B+1, ... and 1 <= lambda <= n (got {B}, {W}, {lam})")
        s = min(srsgc_s(B, W, lam), n - 1)
        kind = "identity" if s == 0 else code
        super().__init__(n, n_jobs, [GroupSpec(n, s, kind)], 1, B, gc_load(n, s), seed, code)
        self.B, self.W, self.lam, self.s, self.exempt = B, W, lam, s, exempt
        self._busy: list[bool] = []                 # per past round: someone repeated

    def params(self) -> dict:
        return {"B": self.B, "W": self.W, "lambda": self.lam, "s": self.s}

    def _window(self) -> int:
        return self.W

    def plan(self, r: int) -> Plan:
        n = self.n
        job = np.full(n, r if r < self.n_jobs else -1)
        j = r - self.B
        if 0 <= j < self.n_jobs and j not in self.decoded:
            missing = np.flatnonzero(~self._book(j).have[0])
            v = len(missing)
            if v > self.s:
                job[missing[: v - self.s]] = j
        return Plan(r, job[:, None], np.zeros((n, 1), np.int64), np.arange(n)[:, None].copy())

    def _extra_state(self) -> dict:
        return {"busy": list(self._busy)}

    def _load_extra_state(self, state: dict) -> None:
        self._busy = [bool(b) for b in state.get("busy", [])]

    def _note_round(self, plan: Plan, strag: np.ndarray) -> None:
        self._busy.append(bool((plan.job[:, 0] == plan.round - self.B).any()))
        self._busy = self._busy[-(self.W - 1):]

    def model_ok(self, r: int, stragglers: np.ndarray) -> bool:
        past = self.hist
        if self.exempt and past.shape[1]:
            # A past round GC alone absorbed (nobody repeating, <= s stragglers) is erased from the
            # history for BOTH checks (lambda budget and burst length), as in the authors'
            # simulator: its job decoded in that round and no later plan depends on who straggled
            # in it, so the run is the same as on the pattern without those stragglers
            # (docs/sgc.md gives the argument).
            busy = ([True] * past.shape[1] + self._busy)[-past.shape[1]:]   # unknown: not absorbed
            absorbed = np.array([not b and past[:, k].sum() <= self.s for k, b in enumerate(busy)], dtype=bool)
            past = past.copy()
            past[:, absorbed] = False
        return bursty_conforms(past, stragglers, self.B, self.W, self.lam)


class MSGC(Scheme):
    """Multiplexed SGC: uncoded D1 minitasks + B coded D2 groups on a diagonal schedule (T = W-2+B)."""
    name = "m-sgc"

    def __init__(self, n: int, n_jobs: int, B: int, W: int, lam: int, seed: int = 0, code: str = "cyclic") -> None:
        if B < 1 or W < 2 or B >= W or not 1 <= lam <= n:
            raise ValueError(f"m-sgc: need 1 <= B < W and 1 <= lambda <= n (got {B}, {W}, {lam})")
        groups = [GroupSpec(n * (W - 1), 0, "identity")]
        if lam < n:
            groups += [GroupSpec(n, lam, code if lam > 0 else "identity") for _ in range(B)]
        super().__init__(n, n_jobs, groups, W - 1 + B, W - 2 + B, msgc_load(n, B, W, lam), seed, code)
        self.B, self.W, self.lam = B, W, lam
        self.d1 = W - 1

    def params(self) -> dict:
        return {"B": self.B, "W": self.W, "lambda": self.lam}

    def _window(self) -> int:
        return self.W

    def plan(self, r: int) -> Plan:
        n, d1 = self.n, self.d1
        job = np.full((n, self.slots), -1, dtype=np.int64)
        group = np.zeros((n, self.slots), dtype=np.int64)
        row = np.zeros((n, self.slots), dtype=np.int64)
        ids = np.arange(n)
        for m in range(self.slots):
            t = r - m
            if not 0 <= t < self.n_jobs or t in self.decoded:
                continue
            if m < d1:
                job[:, m], row[:, m] = t, ids * d1 + m
                continue
            have = self._book(t).have[0].reshape(n, d1)
            short = ~have.all(axis=1)
            first_missing = np.argmin(have, axis=1)
            job[:, m] = t
            row[:, m] = np.where(short, ids * d1 + first_missing, ids)
            if len(self.groups) > 1:
                group[:, m] = np.where(short, 0, 1 + m - d1)
            else:                                   # lambda = n: no D2 data, the slot only repeats
                job[~short, m] = -1
                row[:, m] = ids * d1 + first_missing
        return Plan(r, job, group, row)

    def model_ok(self, r: int, stragglers: np.ndarray) -> bool:
        return bursty_conforms(self.hist, stragglers, self.B, self.W, self.lam)


def make_scheme(name: str, n: int, n_jobs: int, *, s: int = 0, B: int = 1, W: int = 2, lam: int = 1,
                seed: int = 0, code: str = "cyclic") -> Scheme:
    if name == "uncoded":
        return Uncoded(n, n_jobs, seed)
    if name == "gc":
        return GC(n, n_jobs, s, seed, code)
    if name == "sr-sgc":
        return SRSGC(n, n_jobs, B, W, lam, seed, code)
    if name == "m-sgc":
        return MSGC(n, n_jobs, B, W, lam, seed, code)
    raise ValueError(f"strategy: unknown scheme {name!r}; allowed: {', '.join(SCHEMES)}")


# -- which samples of the full-job batch each (group, partition) covers --------------------------
def layout_bounds(scheme: Scheme, batch: int) -> list[np.ndarray]:
    """Per group, the partition boundaries (rows + 1 ints) into the job batch's sample order."""
    n = scheme.n
    if isinstance(scheme, MSGC):
        n1 = int(round(msgc_d1_fraction(n, scheme.B, scheme.W, scheme.lam) * batch))
        out = [_split(0, n1, scheme.groups[0].rows)]
        d2 = _split(n1, batch, len(scheme.groups) - 1) if len(scheme.groups) > 1 else np.array([n1])
        for g in range(len(scheme.groups) - 1):
            out.append(_split(int(d2[g]), int(d2[g + 1]), n))
        return out
    return [_split(0, batch, n)]


def _split(lo: int, hi: int, parts: int) -> np.ndarray:
    return lo + np.array([((hi - lo) * k) // parts for k in range(parts + 1)], dtype=np.int64)


def unit_segments(scheme: Scheme, bounds: list[np.ndarray], group: int, row: int) -> list[tuple[int, int, float]]:
    """(start, end, coefficient) sample ranges a worker combines for one unit: the nonzero entries
    of the group's code row."""
    B = scheme.decoder(group).B
    cols = np.flatnonzero(B[row])
    b = bounds[group]
    return [(int(b[j]), int(b[j + 1]), float(B[row, j])) for j in cols]
