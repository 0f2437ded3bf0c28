"""Per-run metrics: one JSON object per round in RUN_DIR/metrics.jsonl, plus a results table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from thinwire.errors import DataError


TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_MISSING = "needs the tensorboard package: pip install 'thinwire[tensorboard]'"


def tensorboard_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("tensorboard") is not None


class MetricsWriter:
    """Appends rounds to metrics.jsonl. On resume, rounds after the checkpoint are dropped first so
    a crashed-and-resumed run has each round exactly once.

    With `tensorboard=True` every numeric field of a row is also a TensorBoard scalar (step =
    round; list fields such as stragglers become counts) in RUN_DIR/tensorboard, written by
    torch's maintained SummaryWriter (needs the optional `tensorboard` package). On resume the
    event files are purged past the checkpoint too."""

    def __init__(self, run_dir: str | Path, resume_after: int | None = None, *, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("round", -1) <= resume_after]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._tb = None
        if tensorboard:
            if not tensorboard_available():
                from thinwire.errors import ConfigError
                raise ConfigError("tensorboard", TENSORBOARD_MISSING)
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_after is None else resume_after + 1
            self._tb = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR), purge_step=purge)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
        if self._tb is not None:
            step = int(row.get("round", 0))
            for key, value in tensorboard_scalars(row).items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()  # a crash loses nothing the jsonl has

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def tensorboard_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The scalars TensorBoard gets from one metrics row: numbers as they are, lists as counts."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k == "round" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
        elif isinstance(v, (list, tuple)):
            out[f"{k}_count"] = float(len(v))
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"metrics: no metrics.jsonl at {str(p)!r}; allowed: a run directory written by thinwire") \
            from None
    except UnicodeDecodeError as e:
        raise DataError(f"metrics: {str(p)!r} is not UTF-8 text (byte {e.start}); allowed: thinwire's JSON lines") \
            from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"metrics: {str(p)!r} line {n} is not JSON ({e.msg}); allowed: one JSON object "
                                "per line") from None
            if not isinstance(row, dict):
                raise DataError(f"metrics: {str(p)!r} line {n} is not a JSON object")
            rows.append(row)
    return rows


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n:.1f} TB"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width table (no dependency), right-aligned numbers."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != 0 and (abs(c) < 1e-3 or abs(c) >= 1e6):
            return f"{c:.3e}"
        return f"{c:.4f}" if abs(c) < 10 else f"{c:.1f}"
    return str(c)
