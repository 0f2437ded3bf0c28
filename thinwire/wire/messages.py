"""Update and model messages on the wire: building the protobuf chunk messages of a push and of a
model download, and a hand-written parser of `UpdateChunk` that reads the payload without copying
it (the generated protobuf parser copies every chunk's bytes once more)."""
from __future__ import annotations

from typing import Iterator, Sequence

from thinwire.faults.network import chunk_ranges
from thinwire.wire.format import DEFAULT_MAX_UPDATE, ByteCounter, WireError, crc32, sha256
from thinwire.wire.link import Link


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
