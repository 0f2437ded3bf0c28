"""The chunked wire shared by server and clients: chunking, checksums, byte accounting, and the
fault-injecting link that applies the run's NetworkModel to a real gRPC stream.

An `Encoded` payload travels as a header (prefix + JSON header, sent reliably in the first
message) and a body cut into `chunk_ranges(body, chunk_size)`; each chunk carries its offset and
crc32, the header the list of the chunks' crc32 (and optionally a sha256 of the whole body). The same chunk ranges and the same seeded
`NetworkModel.lost_chunks` masks as the simulator are used, so a real run loses exactly the
chunks the simulator would have lost for the same seed.

Byte counters count serialized gRPC messages (protobuf bytes + the 5-byte gRPC length prefix),
split into payload (header + body bytes) and framing (everything else); HTTP/2 frame headers
(9 bytes per DATA frame) and TLS records sit below gRPC and are not visible here.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .faults import NetworkModel, chunk_ranges

GRPC_FRAME = 5                       # compressed flag (1) + message length (4)
MAX_CHUNK_SIZE = 4 * 1024 * 1024     # a chunk must stay far below gRPC's message limit
DEFAULT_MAX_UPDATE = 1 << 30         # 1 GiB encoded update limit unless configured


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def message_limit(chunk_size: int) -> int:
    """gRPC max message size for a link carrying `chunk_size` chunks: one chunk plus 1 MiB of room
    for the header message (codec JSON) and protobuf framing."""
    return int(chunk_size) + (1 << 20)


def channel_options(chunk_size: int) -> list[tuple[str, int]]:
    """Explicit gRPC limits for both ends (never rely on the 4 MiB default)."""
    limit = message_limit(chunk_size)
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


def server_options(chunk_size: int) -> list[tuple[str, int]]:
    """Server limits. BDP probing is off so each stream's HTTP/2 receive window stays at gRPC's
    initial 64 KiB: with it on, windows grow to many MiB per stream and gRPC itself buffers that
    much for every push waiting for reassembly budget, so memory grew with the number of streams."""
    limit = message_limit(chunk_size)
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000), ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0)]


PUSH_SIZE_KEY = "tw-push-size"      # push metadata: "<Encoded bytes>,<chunk size>"


def push_size_metadata(nbytes: int, chunk_size: int) -> tuple[str, str]:
    """Declared before the first message, so the server can reserve reassembly memory before it
    reads anything: a push waiting for room then holds no body bytes on the server."""
    return PUSH_SIZE_KEY, f"{int(nbytes)},{int(chunk_size)}"


def declared_push_size(metadata) -> tuple[int, int] | None:
    """(Encoded bytes, chunk size) a client declared, None if absent; raises WireError if malformed."""
    for key, value in metadata or ():
        if key == PUSH_SIZE_KEY:
            try:
                nbytes, chunk = (int(v) for v in str(value).split(","))
            except ValueError:
                raise WireError("INVALID_ARGUMENT", f"{PUSH_SIZE_KEY} metadata: {value!r}; allowed: "
                                "'<bytes>,<chunk size>' with two integers") from None
            if nbytes < 8 or not 1 <= chunk <= MAX_CHUNK_SIZE:
                raise WireError("INVALID_ARGUMENT", f"{PUSH_SIZE_KEY} metadata: {value!r}; allowed: bytes >= 8 "
                                f"and chunk size 1..{MAX_CHUNK_SIZE}")
            return nbytes, chunk
    return None


class WireError(Exception):
    """A chunk or payload that violates the protocol; `code` names the gRPC status to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- byte accounting ------------------------------------------------------------------------------
@dataclass
class ByteCounter:
    """Thread-safe counters of what crossed one side of the socket."""

    messages: int = 0
    wire_bytes: int = 0          # serialized messages + gRPC length prefixes
    payload_bytes: int = 0       # Encoded header + body bytes inside them
    dropped_chunks: int = 0      # chunks the fault model lost (never sent)
    dropped_bytes: int = 0
    retransmitted_chunks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, wire: int, payload: int) -> None:
        with self._lock:
            self.messages += 1
            self.wire_bytes += wire
            self.payload_bytes += payload

    def add_wire(self, nbytes: int) -> None:
        """One serialized message of `nbytes` crossed (the gRPC prefix is added here)."""
        with self._lock:
            self.messages += 1
            self.wire_bytes += nbytes + GRPC_FRAME

    def add_payload(self, nbytes: int) -> None:
        with self._lock:
            self.payload_bytes += nbytes

    def drop(self, nbytes: int) -> None:
        with self._lock:
            self.dropped_chunks += 1
            self.dropped_bytes += nbytes

    def retransmit(self, n: int) -> None:
        with self._lock:
            self.retransmitted_chunks += n

    @property
    def framing_bytes(self) -> int:
        return self.wire_bytes - self.payload_bytes

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"messages": self.messages, "wire_bytes": self.wire_bytes, "payload_bytes": self.payload_bytes,
                    "framing_bytes": self.wire_bytes - self.payload_bytes, "dropped_chunks": self.dropped_chunks,
                    "dropped_bytes": self.dropped_bytes, "retransmitted_chunks": self.retransmitted_chunks}


def wire_size(msg) -> int:
    """Bytes a protobuf message occupies in the gRPC stream."""
    return msg.ByteSize() + GRPC_FRAME


# -- the emulated link ----------------------------------------------------------------------------
class Link:
    """One client's link under the run's NetworkModel, in wall time scaled by `time_scale`.

    With `model=None` (emulation off) nothing is delayed or dropped: only the real network acts.
    """

    def __init__(self, model: NetworkModel | None, client_id: int, direction: str = "up",
                 time_scale: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.model, self.client_id, self.direction = model, int(client_id), direction
        self.time_scale = float(time_scale)
        self._sleep = sleep
        if model is not None:
            prof = model.profile(self.client_id)
            self.bps = prof.up_bps if direction == "up" else prof.down_bps
            self.latency_s = prof.latency_s
        else:
            self.bps, self.latency_s = math.inf, 0.0
        self.delayed_s = 0.0

    @property
    def active(self) -> bool:
        return self.model is not None

    def wait(self, seconds: float) -> None:
        s = seconds * self.time_scale
        if self.model is not None and s > 0:
            self.delayed_s += s
            self._sleep(s)

    def airtime(self, nbytes: int) -> None:
        """Serialisation delay of `nbytes` at the link's bandwidth."""
        if self.model is not None:
            self.wait(nbytes * 8.0 / self.bps)

    def latency(self, trips: int = 1) -> None:
        self.wait(trips * self.latency_s)

    def lost(self, rnd: int, n_chunks: int, attempt: int) -> np.ndarray:
        if self.model is None:
            return np.zeros(n_chunks, dtype=bool)
        return self.model.lost_chunks(self.client_id, rnd, n_chunks, attempt, self.direction)


# -- sending --------------------------------------------------------------------------------------
def split(body_size: int, chunk_size: int) -> list[tuple[int, int]]:
    return chunk_ranges(body_size, chunk_size)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_PAYLOAD_TAG = bytes([(6 << 3) | 2])       # UpdateChunk.payload: field 6, length-delimited


def chunk_crcs(body: bytes | memoryview, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """crc32 of every chunk of `body`: the push header's `chunk_crc32` list."""
    return [crc32(body[a:b]) for a, b in ranges]


def chunk_bytes(pb2, rnd: int, client_id: int, seq: int, num_chunks: int, offset: int, piece: memoryview,
                header=None, crc: int | None = None) -> bytes:
    """A serialized UpdateChunk built with one copy of the payload (protobuf accepts fields in any
    order, so the small fields are serialized normally and the payload field appended by hand).
    `header` (a PushHeader) makes it the push's first message; `crc` is the piece's crc32 when
    already known."""
    head = pb2.UpdateChunk(round=rnd, client_id=client_id, seq=seq, num_chunks=num_chunks, offset=offset,
                           crc32=crc32(piece) if crc is None else crc, header=header).SerializeToString()
    return b"".join((head, _PAYLOAD_TAG, _varint(len(piece)), piece))


def update_messages(pb2, *, rnd: int, client_id: int, header, body: memoryview, ranges: Sequence[tuple[int, int]],
                    seqs: Sequence[int], link: Link, attempt: int, counter: ByteCounter) -> Iterator[bytes]:
    """Yield one push as serialized UpdateChunk messages: the header message (never dropped), then
    the chunks `seqs`. A push of a single chunk (most compressed updates) is one message: the
    header rides on the chunk. Longer pushes keep the header alone, so a push waiting for the
    server's reassembly budget holds no body bytes. Every yielded message is counted exactly
    (its length + the gRPC prefix).

    Each chunk's crc32 is taken from the header's `chunk_crc32` list when it has one (computed once
    per update, see `chunk_crcs`). Chunks the link loses on this attempt are not sent (their airtime is still spent, as on a
    lossy radio); the server reports them missing and the caller decides to resend or not.
    Retransmissions are counted by the caller once the server has answered the push (see
    `Connection.push`), the way the server counts them, so both ends report the same figure.
    """
    header.attempt = attempt
    if attempt == 0:
        link.latency()
    else:
        link.latency(2)                     # the NACK round trip before a retransmission
    link.airtime(len(header.encoded_header))
    counter.add_payload(len(header.encoded_header))
    lost = link.lost(rnd, len(seqs), attempt)
    crcs = list(header.chunk_crc32) if len(header.chunk_crc32) == len(ranges) else None
    pending = header                        # sent alone first, or riding on a lone chunk
    if len(seqs) != 1 or (lost[0] and ranges[seqs[0]][1] > ranges[seqs[0]][0]):
        msg = pb2.UpdateChunk(round=rnd, client_id=client_id, num_chunks=len(ranges), header=header).SerializeToString()
        counter.add_wire(len(msg))
        pending = None
        yield msg
    for i, seq in enumerate(seqs):
        a, b = ranges[seq]
        link.airtime(b - a)
        if lost[i] and b > a:
            counter.drop(b - a)
            continue
        msg = chunk_bytes(pb2, rnd, client_id, seq, len(ranges), a, body[a:b], header=pending,
                          crc=crcs[seq] if crcs else None)
        counter.add_wire(len(msg))
        counter.add_payload(b - a)
        yield msg


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


class Chunk:
    """An UpdateChunk parsed without copying its payload (a memoryview into the received bytes)."""

    __slots__ = ("round", "client_id", "seq", "num_chunks", "offset", "payload", "crc32", "header")

    def __init__(self) -> None:
        self.round = self.client_id = self.seq = self.num_chunks = self.offset = self.crc32 = 0
        self.payload: memoryview | bytes = b""
        self.header = None


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _signed(v: int, bits: int) -> int:
    v &= (1 << 64) - 1
    v = v - (1 << 64) if v >= 1 << 63 else v
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not lo <= v <= hi:
        raise ValueError(f"int{bits} out of range")
    return v


def parse_chunk(pb2, data: bytes) -> Chunk:
    """Parse a serialized UpdateChunk (protobuf wire format); raises ValueError when malformed.

    Equivalent to `UpdateChunk.FromString` except that the payload stays a view of `data`: the
    server copies each chunk once, from the socket buffer into the reassembly buffer."""
    c = Chunk()
    mv = memoryview(data)
    n, pos = len(data), 0
    try:
        while pos < n:
            key, pos = _read_varint(data, pos)
            field, wt = key >> 3, key & 7
            if wt == 0:
                v, pos = _read_varint(data, pos)
                if field == 1:
                    c.round = _signed(v, 64)
                elif field == 2:
                    c.client_id = _signed(v, 32)
                elif field in (3, 4, 7):
                    if v >= 1 << 32:
                        raise ValueError(f"field {field}: uint32 out of range")
                    setattr(c, {3: "seq", 4: "num_chunks", 7: "crc32"}[field], v)
                elif field == 5:
                    c.offset = v
            elif wt == 2:
                ln, pos = _read_varint(data, pos)
                end = pos + ln
                if end > n:
                    raise ValueError("length-delimited field overruns the message")
                if field == 6:
                    c.payload = mv[pos:end]
                elif field == 8:
                    c.header = pb2.PushHeader.FromString(mv[pos:end])
                pos = end
            elif wt == 1:
                pos += 8
            elif wt == 5:
                pos += 4
            else:
                raise ValueError(f"unsupported wire type {wt}")
        if pos != n:
            raise ValueError("truncated message")
    except IndexError:
        raise ValueError("truncated message") from None
    except Exception as e:  # protobuf DecodeError of a broken header
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"bad header: {e}") from None
    return c


def model_messages(pb2, *, version: int, rnd: int, blob: bytes, header_size: int, chunk_size: int,
                   sha: bytes, counter: ByteCounter | None = None) -> Iterator:
    """Server-side: stream an encoded global model (header in the first message). Only payload
    bytes are counted here; the serializer counts the wire bytes."""
    body = memoryview(blob)[header_size:]
    ranges = chunk_ranges(len(body), chunk_size)
    for seq, (a, b) in enumerate(ranges):
        piece = bytes(body[a:b])
        msg = pb2.ModelChunk(model_version=version, round=rnd, seq=seq, num_chunks=len(ranges), offset=a,
                             payload=piece, crc32=crc32(piece))
        payload = b - a
        if seq == 0:
            msg.encoded_header = bytes(blob[:header_size])
            msg.body_size = len(body)
            msg.body_sha256 = sha
            payload += header_size
        if counter is not None:
            counter.add_payload(payload)
        yield msg


def receive_model(stream, counter: ByteCounter | None = None, link: Link | None = None,
                  max_bytes: int = DEFAULT_MAX_UPDATE) -> tuple[int, int, bytearray]:
    """Client-side: reassemble a model stream into (version, round, Encoded bytes), checking every
    chunk's crc32 and the body's sha256 (the stream's deserializer counts wire bytes). Raises
    WireError on any inconsistency."""
    buf: bytearray | None = None
    hsize = 0
    version = rnd = -1
    seen = 0
    sha = b""
    if link is not None:
        link.latency()
    for msg in stream:
        if counter is not None:
            counter.add_payload(len(msg.payload) + len(msg.encoded_header))
        if link is not None:
            link.airtime(len(msg.payload) + len(msg.encoded_header))
        if buf is None:
            if not msg.encoded_header or msg.seq != 0:
                raise WireError("INVALID_ARGUMENT", "model stream: first message lacks the Encoded header")
            hsize = len(msg.encoded_header)
            if hsize + msg.body_size > max_bytes:
                raise WireError("RESOURCE_EXHAUSTED", f"model of {hsize + msg.body_size} bytes exceeds {max_bytes}")
            buf = bytearray(hsize + msg.body_size)
            buf[:hsize] = msg.encoded_header
            version, rnd, sha = msg.model_version, msg.round, bytes(msg.body_sha256)
        if crc32(msg.payload) != msg.crc32:
            raise WireError("DATA_LOSS", f"model chunk {msg.seq}: crc32 mismatch")
        a = hsize + msg.offset
        if a + len(msg.payload) > len(buf):
            raise WireError("INVALID_ARGUMENT", f"model chunk {msg.seq} overruns the body")
        buf[a:a + len(msg.payload)] = msg.payload
        seen += len(msg.payload)
    if buf is None:
        raise WireError("INVALID_ARGUMENT", "model stream: empty")
    if seen != len(buf) - hsize or sha256(memoryview(buf)[hsize:]) != sha:
        raise WireError("DATA_LOSS", "model stream: body incomplete or sha256 mismatch")
    return version, rnd, buf


__all__ = ["GRPC_FRAME", "MAX_CHUNK_SIZE", "ByteCounter", "Link", "Reassembly", "BODY_ALIGN", "PUSH_SIZE_KEY", "push_size_metadata", "declared_push_size", "BufferBudget", "WireError",
           "crc32", "sha256", "wire_size", "split", "update_messages", "chunk_bytes", "chunk_crcs", "Chunk", "parse_chunk", "model_messages", "receive_model",
           "channel_options", "server_options", "message_limit"]
