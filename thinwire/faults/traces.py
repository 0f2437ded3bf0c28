"""Trace files of the fault model: client profiles (`client_id,speed,up_mbps,down_mbps,latency_ms`),
straggler slowdowns (`client_id,round,slowdown`) and SGC completion-time traces. Every unreadable
or malformed file is a one-line ConfigError naming the field."""
from __future__ import annotations

import csv
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from thinwire.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    pass


# -- traces -----------------------------------------------------------------------------------
def _read_csv(path: str, required: Sequence[str], field: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(field, f"cannot read trace {path!r} ({e.strerror})", "a readable CSV file") from None
    if not rows:
        raise ConfigError(field, f"trace {path!r} has no rows", f"a CSV with columns {', '.join(required)}")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise ConfigError(field, f"trace {path!r} lacks columns {', '.join(missing)}",
                          f"a CSV with columns {', '.join(required)}")
    return rows


def read_profile_trace(path: str) -> list[tuple[float, float, float, float]]:
    """CSV `client_id,speed,up_mbps,down_mbps,latency_ms`; clients beyond the trace wrap around."""
    cols = ("client_id", "speed", "up_mbps", "down_mbps", "latency_ms")
    rows = _read_csv(path, cols, "trace")
    out = []
    for i, row in enumerate(sorted(rows, key=lambda r: int(r["client_id"]))):
        try:
            vals = tuple(float(row[c]) for c in cols[1:])
        except ValueError:
            raise ConfigError("trace", f"{path}: row {i + 2} has a non-numeric value", "numbers") from None
        if min(vals[:3]) <= 0 or vals[3] < 0 or not all(math.isfinite(v) for v in vals):
            raise ConfigError("trace", f"{path}: row {i + 2} has a non-positive speed or bandwidth",
                              "speed, up_mbps, down_mbps > 0 and latency_ms >= 0")
        out.append(vals)  # type: ignore[arg-type]
    return out


def read_straggler_trace(path: str) -> dict[tuple[int, int], float]:
    """CSV `client_id,round,slowdown`: the listed (client, round) pairs straggle by that factor."""
    rows = _read_csv(path, ("client_id", "round", "slowdown"), "straggler_trace")
    out = {}
    for i, row in enumerate(rows):
        try:
            k, r, s = int(row["client_id"]), int(row["round"]), float(row["slowdown"])
        except ValueError:
            raise ConfigError("straggler_trace", f"{path}: row {i + 2} is not client_id,round,slowdown numbers") from None
        if s < 1.0:
            raise ConfigError("straggler_trace", f"{path}: row {i + 2} slowdown {s} < 1", ">= 1")
        out[(k, r)] = s
    return out


def write_completion_trace(path: str, times: np.ndarray) -> None:
    """CSV `client_id,round,time_s` of a worker x round completion-time matrix."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["client_id", "round", "time_s"])
        for k in range(times.shape[0]):
            for r in range(times.shape[1]):
                w.writerow([k, r, repr(float(times[k, r]))])


def read_completion_trace(path: str) -> np.ndarray:
    """Worker x round completion-time matrix from CSV `client_id,round,time_s` (every cell present)."""
    rows = _read_csv(path, ("client_id", "round", "time_s"), "completion_trace")
    try:
        cells = [(int(r["client_id"]), int(r["round"]), float(r["time_s"])) for r in rows]
    except ValueError:
        raise ConfigError("completion_trace", f"{path}: a row is not client_id,round,time_s numbers") from None
    n = 1 + max(c[0] for c in cells)
    rounds = 1 + max(c[1] for c in cells)
    out = np.full((n, rounds), np.nan)
    for k, r, t in cells:
        if k < 0 or r < 0 or not (t >= 0 and math.isfinite(t)):
            raise ConfigError("completion_trace", f"{path}: bad cell client {k} round {r} time {t}",
                              "client_id, round >= 0 and a finite time_s >= 0")
        out[k, r] = t
    if np.isnan(out).any():
        raise ConfigError("completion_trace", f"{path}: missing (client, round) cells",
                          "one row per client per round")
    return out
