"""The chunked wire format shared by server and clients: limits, checksums, chunk ranges, push-size
metadata, wire errors and byte accounting.

An `Encoded` payload travels as a header (prefix + JSON header, sent reliably in the first
message) and a body cut into `split(body, chunk_size)`; each chunk carries its offset and crc32,
the header the list of the chunks' crc32 (and optionally a sha256 of the whole body). The same chunk
ranges as the simulator's fault model are used, so a real run loses exactly the chunks the
simulator would have lost for the same seed.

Byte counters count serialized gRPC messages (protobuf bytes + the 5-byte gRPC length prefix),
split into payload (header + body bytes) and framing (everything else); HTTP/2 frame headers
(9 bytes per DATA frame) and TLS records sit below gRPC and are not visible here.
"""
from __future__ import annotations

import hashlib
import threading
import zlib
from dataclasses import dataclass, field
from typing import Sequence

from thinwire.faults.network import chunk_ranges

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


# -- sending --------------------------------------------------------------------------------------
def split(body_size: int, chunk_size: int) -> list[tuple[int, int]]:
    return chunk_ranges(body_size, chunk_size)


def chunk_crcs(body: bytes | memoryview, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """crc32 of every chunk of `body`: the push header's `chunk_crc32` list."""
    return [crc32(body[a:b]) for a, b in ranges]
