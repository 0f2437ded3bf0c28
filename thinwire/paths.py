"""Output directories named by the user (run dirs, --out): created with a one-line error naming
the field when that is impossible (a regular file in the way, no permission), never a traceback."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def make_dir(field: str, path: str | os.PathLike) -> Path:
    """Create directory `path` (and its parents) if missing; ConfigError naming `field` otherwise."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            what = "is" if parent == p else "is under"
            raise ConfigError(field, f"{str(p)!r} {what} the regular file {str(parent)!r}",
                              "a directory path (not a file, nor under one)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(field, f"cannot create directory {str(p)!r} ({e.strerror or e})",
                          "a writable directory path") from None
    return p


__all__ = ["make_dir"]
