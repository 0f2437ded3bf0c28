"""Crash points for chaos tests: `THINWIRE_CRASH_AT=POINT:round=R` makes the process kill itself
with SIGKILL (no cleanup, no flush: as `kill -9` would) when it reaches POINT in round R.

    THINWIRE_CRASH_AT=mid_push:round=1         a push of round 1 has placed its first chunk
    THINWIRE_CRASH_AT=after_fold:round=1       an update of round 1 was folded into the sum
    THINWIRE_CRASH_AT=mid_checkpoint:round=1   round 1's checkpoint is written but not yet renamed
    THINWIRE_CRASH_AT=secagg_masked:round=0    a secure-aggregation client's masks are fixed (U1 known),
                                               its masked input not yet sent (a dropout after masking)

Unset (every normal run) the check is one dict lookup done once per process.
"""
from __future__ import annotations

import os
import signal

ENV = "THINWIRE_CRASH_AT"
POINTS = ("mid_push", "after_fold", "mid_checkpoint", "secagg_masked")


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, rest = value.partition(":")
    key, _, rnd = rest.partition("=")
    if point not in POINTS or key != "round" or not rnd.lstrip("-").isdigit():
        raise ValueError(f"{ENV}={value!r}; allowed: POINT:round=N with POINT one of {', '.join(POINTS)}")
    return point, int(rnd)


_TARGET = _parse(os.environ.get(ENV))


def crash_point(point: str, rnd: int) -> None:
    """SIGKILL this process if it was told to crash at `point` of round `rnd`."""
    if _TARGET is not None and _TARGET == (point, int(rnd)):
        os.kill(os.getpid(), signal.SIGKILL)
