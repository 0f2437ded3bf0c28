"""The served process's malloc policy (glibc).

A push arrives as chunk messages (about `chunk_size` bytes each) that gRPC hands to Python as
fresh `bytes` objects, hundreds of MB/s of them. Above glibc's `M_MMAP_THRESHOLD` every such
message is mapped fresh (page-faulting zeroed pages in) and unmapped on free: with the threshold at
256 KiB that halved the server's ingest in `thinwire bench wire`. Left to glibc, the threshold
climbs to the largest block ever freed (the size of a model), after which model-size buffers land
on the heap, fragment it and are never returned: the RSS then grew with the number of concurrent
streams. So the threshold is fixed just above the largest chunk message: messages are carved from
the heap and reused without faults, model-size buffers are mapped and returned on free. Two arenas
keep per-thread heaps from multiplying.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from thinwire.wire.format import message_limit

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


def tune_malloc(chunk_size: int) -> bool:
    """Set the process's malloc policy for chunk messages of `chunk_size`; False when the C
    library is not glibc (musl, macOS), whose defaults then stand."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    threshold = message_limit(chunk_size) + (64 << 10)
    libc.mallopt(M_MMAP_THRESHOLD, threshold)       # fixed (no dynamic growth)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold)   # what glibc would pair with it
    libc.mallopt(M_ARENA_MAX, 2)
    return True


__all__ = ["tune_malloc"]
