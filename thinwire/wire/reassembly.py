"""Server-side reassembly of chunked pushes, and the memory budget every push in flight draws from.

A `Reassembly` places each verified chunk at its offset in one preallocated, cache-line aligned
buffer and knows which chunks are still missing (or, under the holes policy, which byte ranges were
lost); a `BufferBudget` caps the bytes all reassemblies hold together and pools freed buffers."""
from __future__ import annotations

import threading
import time

import numpy as np

from thinwire.faults.network import chunk_ranges
from thinwire.wire.format import MAX_CHUNK_SIZE, WireError, crc32, sha256

# -- receiving ------------------------------------------------------------------------------------
BODY_ALIGN = 64                      # reassembled bodies start on a cache-line boundary


def _address(buf: bytearray) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data if len(buf) else 0


class Reassembly:
    """Server-side buffer of one (round, client) push: validates and places chunks, ignores replays.

    Content integrity: every push header lists the crc32 of each body chunk (required); a chunk is
    placed only if its bytes match its entry, and a partial buffer left by a push that ended early
    is resumed only by a push with the identical header, list included (`same_header`), i.e. one
    that announces the same content. So chunks of one push never end up inside another push's body:
    a stale chunk either belongs to the same list (the same bytes, up to crc32) or the buffer starts
    afresh. A sha256 of the whole body is optional (a client flag, for protection against forged
    crc32 collisions) and verified when present. The list costs 4 bytes per chunk and no pass over
    the body beyond the per-chunk crc32 that was already computed on both ends.

    The buffer holds the Encoded header followed by the body, so the finished payload is parsed
    in place without another copy. The payload is placed so that the body starts on a 64-byte
    boundary: decoders then read aligned float arrays straight out of it (zero-copy decode).
    """

    def __init__(self, header, *, max_update_bytes: int, max_chunk_size: int = MAX_CHUNK_SIZE) -> None:
        """Validates the header; the buffer itself is attached by `attach` once budget is granted."""
        hsize = len(header.encoded_header)
        if hsize < 8:
            raise WireError("INVALID_ARGUMENT", "push header: encoded_header is missing or truncated")
        if header.chunk_size < 1 or header.chunk_size > max_chunk_size:
            raise WireError("INVALID_ARGUMENT",
                            f"push header: chunk_size {header.chunk_size} out of range 1..{max_chunk_size}")
        total = hsize + header.body_size
        if total > max_update_bytes:
            raise WireError("RESOURCE_EXHAUSTED",
                            f"update of {total} bytes exceeds the server limit of {max_update_bytes} bytes")
        self.ranges = chunk_ranges(int(header.body_size), int(header.chunk_size))
        if header.num_chunks != len(self.ranges):
            raise WireError("INVALID_ARGUMENT", f"push header: num_chunks {header.num_chunks} does not match "
                            f"body_size {header.body_size} / chunk_size {header.chunk_size} = {len(self.ranges)}")
        if len(header.chunk_crc32) != len(self.ranges):
            raise WireError("INVALID_ARGUMENT", f"push header: chunk_crc32 has {len(header.chunk_crc32)} entries; "
                            f"allowed: one crc32 per chunk ({len(self.ranges)})")
        if len(header.body_sha256) not in (0, 32):
            raise WireError("INVALID_ARGUMENT", f"push header: body_sha256 has {len(header.body_sha256)} bytes; "
                            "allowed: none, or the 32-byte sha256 of the body")
        self.header_size = hsize
        self.body_size = int(header.body_size)
        self.chunk_size = int(header.chunk_size)
        self.encoded_header = bytes(header.encoded_header)
        self.sha = bytes(header.body_sha256)
        self.crcs = np.array(header.chunk_crc32, dtype=np.uint32)   # what each chunk must be
        self.buf = bytearray()
        self._bytes: np.ndarray | None = None
        self.start = 0                       # payload = buf[start:start + nbytes]
        self.have = np.zeros(len(self.ranges), dtype=bool)
        self.asked = 0                       # chunks last reported missing: what a retransmission resends
        if self.body_size == 0:
            self.have[:] = True
        self.nbytes = total
        self.buffer_size = self.buffer_bytes(total)
        self.cost = self.charge(total, self.chunk_size)

    @staticmethod
    def buffer_bytes(nbytes: int) -> int:
        """Size of the buffer for `nbytes` Encoded bytes: room to place the body aligned."""
        return nbytes + BODY_ALIGN

    @staticmethod
    def charge(nbytes: int, chunk_size: int) -> int:
        """Budget a push of `nbytes` Encoded bytes is charged: its aligned buffer plus the chunk
        being placed and one more that gRPC may already hold for it, so memory stays bounded
        whatever the number of streams."""
        return Reassembly.buffer_bytes(nbytes) + 2 * chunk_size

    def attach(self, buf: bytearray | None = None) -> None:
        """Give the push its buffer of `buffer_size` bytes (possibly recycled: every byte is
        written before it is read, and holes are zeroed when the body is delivered incomplete)."""
        buf = bytearray(self.buffer_size) if buf is None else buf
        if len(buf) != self.buffer_size:
            raise ValueError("buffer size mismatch")
        self.start = -(_address(buf) + self.header_size) % BODY_ALIGN
        self.buf = buf
        self._bytes = np.frombuffer(buf, dtype=np.uint8)     # numpy copies release the GIL
        self.buf[self.start:self.start + self.header_size] = self.encoded_header

    def detach(self) -> bytearray:
        """Hand the buffer back (to the budget's pool) and forget it."""
        buf, self.buf, self._bytes = self.buf, bytearray(), None
        return buf

    def same_header(self, header) -> bool:
        """Whether a new push for this (round, client) may resume this buffer: it must announce the
        same Encoded header, layout, chunk crc32 list and body digest (or none, both times)."""
        return (bytes(header.encoded_header) == self.encoded_header and header.body_size == self.body_size
                and header.chunk_size == self.chunk_size and bytes(header.body_sha256) == self.sha
                and len(header.chunk_crc32) == len(self.crcs)
                and np.array_equal(np.asarray(header.chunk_crc32, dtype=np.uint32), self.crcs))

    def add(self, seq: int, offset: int, payload: bytes, crc: int) -> bool:
        """Place one chunk; False when it was a replay of a chunk already held (the same bytes, as
        both match the header's crc32). A chunk that does not match its crc32 (corrupted in
        transit) or the header's entry for it (other content) is refused and never placed."""
        if seq >= len(self.ranges):
            raise WireError("INVALID_ARGUMENT", f"chunk seq {seq} out of range 0..{len(self.ranges) - 1}")
        a, b = self.ranges[seq]
        if offset != a or len(payload) != b - a:
            raise WireError("INVALID_ARGUMENT", f"chunk {seq}: offset/length {offset}+{len(payload)} do not match "
                            f"the expected range [{a}, {b})")
        actual = crc32(payload)
        if actual != crc:
            raise WireError("DATA_LOSS", f"chunk {seq}: crc32 mismatch (corrupted in transit)")
        if actual != int(self.crcs[seq]):
            raise WireError("DATA_LOSS", f"chunk {seq}: its crc32 is not the push header's chunk_crc32[{seq}] "
                            "(chunk of other content); push the whole update again")
        if self.have[seq]:
            return False
        at = self.start + self.header_size
        self._bytes[at + a:at + b] = np.frombuffer(payload, dtype=np.uint8)
        self.have[seq] = True
        return True

    @property
    def complete(self) -> bool:
        return bool(self.have.all())

    def missing(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.have)]

    def holes(self) -> list[tuple[int, int]]:
        """Body byte ranges never received; zeroed in the buffer, as `Encoded.from_bytes` expects."""
        out = [self.ranges[i] for i in self.missing()]
        at = self.start + self.header_size
        for a, b in out:
            self.buf[at + a:at + b] = bytes(b - a)
        return out

    def verify(self) -> None:
        """Check the whole-body sha256 when the push sent one (every chunk's crc32 was checked
        against the header's list on arrival). A body with holes (holes policy) cannot match the
        digest; its chunks were still checked one by one."""
        if not self.complete or not self.sha:
            return
        view = self.payload()
        try:
            ok = sha256(view[self.header_size:]) == self.sha
        finally:
            view.release()
        if not ok:
            raise WireError("DATA_LOSS", "update body sha256 mismatch (chunks of different content or corrupted "
                            "payload); push the whole update again")

    def payload(self) -> memoryview:
        """The Encoded bytes, in place (a view: release it before the buffer is recycled)."""
        return memoryview(self.buf)[self.start:self.start + self.nbytes]


class BufferBudget:
    """Caps the bytes held in reassembly buffers across all in-flight pushes (bounded memory) and
    recycles finished buffers, so a steady stream of same-size updates does not page-fault a fresh
    model-size allocation for every push. Idle pooled buffers count against the same cap."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0
        self.buffers = 0                     # buffers handed out by `take` and not yet given back
        self._pool: dict[int, list[bytearray]] = {}
        self._pooled = 0
        self._cv = threading.Condition()

    def acquire(self, nbytes: int, timeout: float, buffer_size: int = 0) -> bool:
        """Reserve `nbytes` for a push that will `take(buffer_size)`; a single push larger than the
        whole budget is let in alone. Pooled buffers are evicted to stay within the cap, but one
        of `buffer_size` is kept for the taking: it is already counted in `nbytes`."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.used + nbytes > self.limit and self.used > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            self.used += nbytes
            keep = buffer_size if self._pool.get(buffer_size) else 0
            while self._pooled - keep > 0 and self.used + self._pooled - keep > self.limit:
                self._evict(keep)
            return True

    def _evict(self, keep: int) -> None:
        """Drop one pooled buffer, sparing one of size `keep`."""
        size = next(s for s, bufs in self._pool.items() if s != keep or len(bufs) > 1)
        bufs = self._pool[size]
        bufs.pop()
        self._pooled -= size
        if not bufs:
            del self._pool[size]

    def clear_pool(self) -> None:
        """Free the idle buffers (between rounds, when nothing is being received)."""
        with self._cv:
            self._pool.clear()
            self._pooled = 0

    def snapshot(self) -> dict[str, int]:
        """What reassembly holds now (the Status RPC and metrics rows): budget charged to pushes in
        flight or partial pushes kept for retransmission, their buffers, and idle pooled bytes."""
        with self._cv:
            return {"reassembly_bytes": self.used, "reassembly_buffers": self.buffers,
                    "reassembly_pooled_bytes": self._pooled}

    def take(self, nbytes: int) -> bytearray:
        """A buffer of exactly `nbytes` (recycled if one is pooled; contents are stale)."""
        with self._cv:
            self.buffers += 1
            bufs = self._pool.get(nbytes)
            if bufs:
                self._pooled -= nbytes
                buf = bufs.pop()
                if not bufs:
                    del self._pool[nbytes]
                return buf
        return bytearray(nbytes)

    def release(self, nbytes: int, buf: bytearray | None = None) -> None:
        """Return `nbytes` of budget; `buf` (a finished push's buffer) is kept for reuse if it fits."""
        if not nbytes and buf is None:
            return
        with self._cv:
            self.used = max(0, self.used - nbytes)
            size = len(buf) if buf is not None else 0
            if size:
                self.buffers = max(0, self.buffers - 1)
            if size and self.used + self._pooled + size <= self.limit:
                self._pool.setdefault(size, []).append(buf)
                self._pooled += size
            self._cv.notify_all()
