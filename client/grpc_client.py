"""A client's connection to the parameter server: retries with backoff, chunked push and download.

Transient failures (server restarting, connection refused) are retried with exponential backoff and
full jitter up to `max_wait` seconds in total; after that `ServerUnavailable` says which server
never answered. Protocol refusals (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) are not retried
here: the caller decides.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import time
from dataclasses import dataclass

import grpc

from thinwire.errors import UserError
from thinwire.protos import thinwire_pb2 as pb2
from thinwire.protos import thinwire_pb2_grpc as pb2_grpc
from thinwire.wire.security import ClientSecurity, open_channel
from thinwire.wire.format import ByteCounter, channel_options, chunk_crcs, push_size_metadata, sha256, split
from thinwire.wire.link import Link
from thinwire.wire.messages import receive_model, update_messages

log = logging.getLogger("thinwire.client")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
MAX_RETRANSMITS = 64
MAX_DIGEST_RESTARTS = 1               # whole-update resends after a DATA_LOSS reply


class ServerUnavailable(UserError):
    """The server did not answer within the client's total retry budget."""


@dataclass
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0
    max_wait: float = 60.0

    def delays(self):
        """Full-jitter exponential delays until `max_wait` seconds have been spent."""
        spent, step = 0.0, self.initial
        while spent < self.max_wait:
            d = min(random.uniform(0, step), self.max_wait - spent)
            spent += d
            yield d
            step = min(self.maximum, step * 2)


class Connection:
    """One gRPC channel shared by all virtual clients of a process."""

    def __init__(self, target: str, security: ClientSecurity, *, chunk_size: int = 1 << 20,
                 backoff: Backoff | None = None, rpc_timeout: float = 30.0,
                 extra_options: list | None = None, body_digest: bool = False) -> None:
        self.target = target
        self.body_digest = body_digest      # also send the body's sha256 (the server verifies it)
        self.extra_options = list(extra_options or [])
        self.security = security
        self.backoff = backoff or Backoff()
        self.rpc_timeout = rpc_timeout
        self.up, self.down = ByteCounter(), ByteCounter()
        self._open(chunk_size)

    def _open(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        # The limit covers any chunk size the server may announce (up to 4 MiB).
        self.channel = open_channel(self.target, self.security,
                                    channel_options(max(chunk_size, 4 << 20)) + self.extra_options)
        self.stub = pb2_grpc.ParameterServerStub(self.channel)
        # Pushes and downloads go through counting (de)serializers: exact bytes, no re-encoding.
        self._push = self.channel.stream_unary("/thinwire.v1.ParameterServer/PushUpdate", request_serializer=None,
                                               response_deserializer=pb2.PushReply.FromString)

        def model_in(data: bytes):
            self.down.add_wire(len(data))
            return pb2.ModelChunk.FromString(data)

        self._model = self.channel.unary_stream("/thinwire.v1.ParameterServer/GetModel",
                                                request_serializer=pb2.ModelRequest.SerializeToString,
                                                response_deserializer=model_in)

    def close(self) -> None:
        self.channel.close()

    # -- retries --------------------------------------------------------------------------------
    def call(self, name: str, request, client_id: int, *, timeout: float | None = None):
        """Unary call with backoff on transient errors."""
        fn = getattr(self.stub, name)
        last: grpc.RpcError | None = None
        for delay in self.backoff.delays():
            try:
                return fn(request, timeout=timeout or self.rpc_timeout, metadata=self.security.metadata(client_id))
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    raise
                last = e
                time.sleep(delay)
        raise ServerUnavailable(f"server {self.target} did not answer for {self.backoff.max_wait:g} s "
                                f"({last.code().name if last else 'no reply'}: {last.details() if last else ''}); "
                                "is `thinwire server` running there?")

    # -- protocol -------------------------------------------------------------------------------
    def join(self, client_id: int):
        reply = self.call("Join", pb2.JoinRequest(client_id=client_id, hostname=socket.gethostname(),
                                                 pid=_pid(), version="1"), client_id)
        return reply, json.loads(reply.config_json)

    def leave(self, client_id: int, reason: str = "done") -> None:
        try:
            self.stub.Leave(pb2.LeaveRequest(client_id=client_id, reason=reason), timeout=5,
                            metadata=self.security.metadata(client_id))
        except grpc.RpcError:
            pass                                # best effort: the heartbeat timeout covers it

    def heartbeat(self, client_id: int, rnd: int = -1):
        return self.stub.Heartbeat(pb2.HeartbeatRequest(client_id=client_id, round=rnd), timeout=5,
                                   metadata=self.security.metadata(client_id))

    def get_task(self, client_id: int):
        return self.call("GetTask", pb2.TaskRequest(client_id=client_id), client_id)

    def _many(self, clients: list[tuple[int, int]]) -> pb2.ManyRequest:
        """A batched request for (client id, round) pairs; the call's token proves the first id,
        per-client tokens travel with the others (a shared token covers them all)."""
        per = self.security.per_client
        return pb2.ManyRequest(clients=[pb2.ClientRef(client_id=c, round=r, token=per.get(c, "") if per else "")
                                        for c, r in clients])

    def heartbeat_many(self, clients: list[tuple[int, int]]):
        """One heartbeat for many virtual clients: (client id, round or -1) pairs."""
        return self.stub.HeartbeatMany(self._many(clients), timeout=10,
                                       metadata=self.security.metadata(clients[0][0]))

    def get_tasks(self, client_ids: list[int]):
        """One task poll for many virtual clients; the reply lists TRAIN tasks only."""
        return self.call("GetTasks", self._many([(c, -1) for c in client_ids]), client_ids[0])

    def get_model(self, client_id: int, version: int = -1, codec: str = "", link: Link | None = None) -> tuple[int, bytearray]:
        req = pb2.ModelRequest(client_id=client_id, model_version=version, codec=codec)
        stream = self._model(req, timeout=self.rpc_timeout * 10, metadata=self.security.metadata(client_id))
        ver, _, blob = receive_model(stream, self.down, link)
        return ver, blob

    def push(self, *, client_id: int, rnd: int, model_version: int, payload: bytes, header_size: int,
             num_samples: int, train_loss: float, link: Link, chunk_size: int, metrics: dict | None = None,
             job: int | None = None) -> pb2.PushReply:
        """Push one Encoded payload; resend what the server reports missing until it is accepted.

        Every chunk carries a crc32 and the header the list of them (computed once here), plus the
        sha256 of the whole body with `body_digest`: the server places only chunks that match the
        list and resumes a partial buffer only for the identical header. A DATA_LOSS reply (a chunk
        or the body did not match what the header announced; the server dropped the buffer) is
        answered by pushing the whole update once more from the start."""
        body = memoryview(payload)[header_size:]
        ranges = split(len(body), chunk_size)
        header = pb2.PushHeader(model_version=model_version, encoded_header=bytes(payload[:header_size]),
                                body_size=len(body), chunk_size=chunk_size, num_chunks=len(ranges),
                                chunk_crc32=chunk_crcs(body, ranges),
                                body_sha256=sha256(body) if self.body_digest else b"", num_samples=num_samples, train_loss=train_loss,
                                metrics=metrics or {})
        if job is not None:
            header.job = job
        hdr = json.loads(bytes(payload[8:header_size]))
        header.codec = str(hdr.get("codec", ""))
        header.codec_params_json = json.dumps(hdr.get("params", {}))
        seqs = list(range(len(ranges)))
        restarts = 0
        attempt = 0
        while attempt <= MAX_RETRANSMITS:
            msgs = update_messages(pb2, rnd=rnd, client_id=client_id, header=header, body=body, ranges=ranges,
                                   seqs=seqs, link=link, attempt=attempt, counter=self.up)
            md = self.security.metadata(client_id)
            if attempt == 0:                    # a retransmission resumes memory the server already holds
                md += (push_size_metadata(len(payload), chunk_size),)
            try:
                reply = self._push(msgs, timeout=self.rpc_timeout * 10, metadata=md)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DATA_LOSS or restarts >= MAX_DIGEST_RESTARTS:
                    raise
                restarts += 1                   # the server dropped its buffer: send everything again
                seqs, attempt = list(range(len(ranges))), 0
                continue
            if attempt:                         # resent chunks the server asked for (lost again or not):
                self.up.retransmit(len(seqs))   # counted like the simulator and the server count them
            if reply.result != pb2.PushReply.INCOMPLETE:
                return reply
            seqs = list(reply.missing)
            attempt += 1
        raise RuntimeError(f"client {client_id}: update still incomplete after {MAX_RETRANSMITS} retransmissions")


def _pid() -> int:
    import os
    return os.getpid()


__all__ = ["Connection", "Backoff", "ServerUnavailable", "RETRYABLE"]
