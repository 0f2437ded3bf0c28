"""gRPC servicer: translates thinwire.v1 calls into ParameterServer operations.

Every protocol violation becomes a gRPC status with a one-line message (INVALID_ARGUMENT,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ALREADY_EXISTS, DATA_LOSS, ...); the push's buffer is
dropped and the server's state is left as it was, so one bad client never disturbs a round.
"""
from __future__ import annotations

import json
import logging
import socket
from concurrent import futures

import grpc

from thinwire.protos import thinwire_pb2 as pb2
from thinwire.protos import thinwire_pb2_grpc as pb2_grpc
from thinwire.security import Authenticator, ServerSecurity, check_identity
from thinwire.transport import (GRPC_FRAME, MAX_CHUNK_SIZE, WireError, declared_push_size, model_messages, parse_chunk,
                                server_options)

from .app import ParameterServer
from .malloc_policy import tune_malloc

log = logging.getLogger("thinwire.server")


def _abort(context, err: WireError) -> None:
    context.abort(getattr(grpc.StatusCode, err.code), str(err))


class Servicer(pb2_grpc.ParameterServerServicer):
    def __init__(self, ps: ParameterServer, auth: Authenticator | None = None) -> None:
        self.ps = ps
        self.auth = auth or Authenticator()

    def _who(self, context, cid: int) -> None:
        check_identity(self.auth, context, cid)
        try:
            self.ps.check_client(cid)
        except WireError as e:
            _abort(context, e)

    def Join(self, request, context):
        self._who(context, request.client_id)
        self.ps.join(request.client_id, request.hostname)
        o = self.ps.opts
        return pb2.JoinReply(run_name=self.ps.cfg.name, config_json=self.ps.config_json(),
                             heartbeat_interval_s=o.heartbeat_interval, chunk_size=self.ps.cfg.chunk_size,
                             max_update_bytes=self.ps.max_update_bytes,
                             max_message_bytes=server_options(self.ps.cfg.chunk_size)[0][1],
                             emulate_network=o.emulate, current_round=self.ps.current_round, time_scale=o.time_scale)

    def Leave(self, request, context):
        self._who(context, request.client_id)
        self.ps.leave(request.client_id)
        return pb2.LeaveReply()

    def Heartbeat(self, request, context):
        self._who(context, request.client_id)
        known = self.ps.touch(request.client_id)
        return pb2.HeartbeatReply(round=self.ps.current_round, known=known, finished=self.ps.finished)

    def GetTask(self, request, context):
        cid = request.client_id
        self._who(context, cid)
        if not self.ps.touch(cid):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"client {cid} has not joined; call Join first")
        action, info = self.ps.task_for(cid)
        if action == "finished":
            return pb2.TaskReply(action=pb2.TaskReply.FINISHED, reason="run finished")
        if action == "wait":
            return pb2.TaskReply(action=pb2.TaskReply.WAIT, retry_after_s=min(0.5, self.ps.opts.heartbeat_interval),
                                 reason=info, round=self.ps.current_round)
        rs, task, left = info
        return pb2.TaskReply(action=pb2.TaskReply.TRAIN, round=rs.round, model_version=self.ps.rounds_done,
                             codec=task.codec, seed=task.seed, task_json=json.dumps(task.to_dict()),
                             model_numel=self.ps.numel, deadline_s=left)

    def GetModel(self, request, context):
        self._who(context, request.client_id)
        try:
            blob, hsize, sha, version = self.ps.model_blob(request.model_version, request.codec)
        except WireError as e:
            _abort(context, e)
        yield from model_messages(pb2, version=version, rnd=version, blob=blob, header_size=hsize,
                                  chunk_size=self.ps.cfg.chunk_size, sha=sha, counter=self.ps.down)

    def PushUpdate(self, request_iterator, context):
        """`request_iterator` yields (UpdateChunk, serialized size) pairs (see `add_to_server`)."""
        ps = self.ps
        key = None
        wire = payload = retrans = reserved = 0
        try:
            declared = declared_push_size(context.invocation_metadata())
            if declared is not None:            # room first, then read: a waiting push holds no body
                reserved = ps.reserve(*declared)
            first, n = next(request_iterator, (None, 0))
            if first is None:
                raise WireError("INVALID_ARGUMENT", "empty push: the first message must carry the header")
            if isinstance(first, ValueError):
                raise WireError("INVALID_ARGUMENT", f"malformed UpdateChunk: {first}")
            wire += n
            check_identity(self.auth, context, first.client_id)
            if first.header is None:
                raise WireError("INVALID_ARGUMENT", "the first message of a push must carry the PushHeader")
            payload += len(first.header.encoded_header) + len(first.payload)
            ps.up.add_payload(len(first.header.encoded_header) + len(first.payload))
            ps.touch(first.client_id)
            header = first.header
            held, reserved = reserved, 0        # begin_push takes the reservation over
            ra = ps.begin_push(first.round, first.client_id, header, held)
            key = (first.round, first.client_id)
            if len(first.payload) and ra.add(first.seq, first.offset, first.payload, first.crc32) and header.attempt:
                retrans += 1                     # the first message may carry a chunk too
            for msg, n in request_iterator:
                wire += n
                if isinstance(msg, ValueError):
                    raise WireError("INVALID_ARGUMENT", f"malformed UpdateChunk: {msg}")
                payload += len(msg.payload)
                ps.up.add_payload(len(msg.payload))
                if msg.round != first.round or msg.client_id != first.client_id:
                    raise WireError("INVALID_ARGUMENT", f"chunk for (round {msg.round}, client {msg.client_id}) "
                                    f"inside a push for (round {first.round}, client {first.client_id})")
                if msg.header is not None:
                    raise WireError("INVALID_ARGUMENT", "only the first message of a push may carry a header")
                if ra.add(msg.seq, msg.offset, msg.payload, msg.crc32) and header.attempt:
                    retrans += 1
            result, missing, holes = ps.finish_push(key, ra, header, retrans)
            key = None
        except WireError as e:
            if key is not None:
                ps.abort_push(key)
            elif e.code != "ALREADY_EXISTS":
                with ps.lock:
                    ps.rejected += 1
            log.info("push refused (%s): %s", e.code, e)
            _abort(context, e)
        except Exception:
            if key is not None:
                ps.abort_push(key)
            raise
        finally:
            ps.budget.release(reserved)         # a reservation not yet taken over by begin_push
        code = {"accepted": pb2.PushReply.ACCEPTED, "incomplete": pb2.PushReply.INCOMPLETE,
                "late": pb2.PushReply.LATE}[result]
        msg = {"accepted": "update accepted", "late": "round already has its updates; update not used",
               "incomplete": f"{len(missing)} chunks missing; resend them"}[result]
        return pb2.PushReply(result=code, missing=missing, message=msg, payload_bytes=payload, wire_bytes=wire,
                             holes=holes)

    def Status(self, request, context):
        s = self.ps.status()
        return pb2.StatusReply(**s)


def add_to_server(servicer: Servicer, server: grpc.Server) -> None:
    """Register the servicer with (de)serializers that count every message's exact wire size
    without re-encoding it: pushes count what arrives, model downloads what leaves."""
    ps = servicer.ps

    def push_in(data: bytes):
        ps.up.add_wire(len(data))
        try:
            return parse_chunk(pb2, data), len(data) + GRPC_FRAME
        except ValueError as e:
            return e, len(data) + GRPC_FRAME      # reported as INVALID_ARGUMENT by the handler

    def model_out(msg) -> bytes:
        data = msg.SerializeToString()
        ps.down.add_wire(len(data))
        return data

    def unary(fn, req):
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                   response_serializer=lambda m: m.SerializeToString())

    handlers = {
        "Join": unary(servicer.Join, pb2.JoinRequest),
        "Leave": unary(servicer.Leave, pb2.LeaveRequest),
        "Heartbeat": unary(servicer.Heartbeat, pb2.HeartbeatRequest),
        "GetTask": unary(servicer.GetTask, pb2.TaskRequest),
        "Status": unary(servicer.Status, pb2.StatusRequest),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(servicer.PushUpdate, request_deserializer=push_in,
                                                           response_serializer=lambda m: m.SerializeToString()),
        "GetModel": grpc.unary_stream_rpc_method_handler(servicer.GetModel, request_deserializer=pb2.ModelRequest.FromString,
                                                         response_serializer=model_out),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("thinwire.v1.ParameterServer", handlers),))


def bind(server: grpc.Server, host: str, port: int, security: ServerSecurity) -> int:
    addr = f"{host}:{port}"
    bound = (server.add_secure_port(addr, security.credentials) if security.credentials is not None
             else server.add_insecure_port(addr))
    return bound


def start_grpc(ps: ParameterServer, security: ServerSecurity) -> tuple[grpc.Server, int]:
    """Start the gRPC server on opts.host:opts.port (0 = any free port); returns (server, port).
    Also sets the process's malloc policy for the run's chunk size (memory.py)."""
    from thinwire.errors import UserError

    opts = server_options(max(ps.cfg.chunk_size, 1))
    if ps.cfg.chunk_size > MAX_CHUNK_SIZE:
        raise UserError(f"chunk_size: {ps.cfg.chunk_size} exceeds the wire limit of {MAX_CHUNK_SIZE} bytes")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=ps.opts.threads, thread_name_prefix="tw-rpc"),
                         interceptors=security.interceptors, options=opts)
    add_to_server(Servicer(ps, security.auth), server)
    try:
        port = bind(server, ps.opts.host, ps.opts.port, security)
    except RuntimeError as e:
        raise UserError(f"port: cannot listen on {ps.opts.host}:{ps.opts.port} ({e})") from None
    if port == 0:
        raise UserError(f"port: cannot listen on {ps.opts.host}:{ps.opts.port} (in use or not allowed)")
    server.start()
    tune_malloc(ps.cfg.chunk_size)
    log.info("serving %s on %s:%d (%s) on host %s", ps.cfg.name, ps.opts.host, port, security.scheme,
             socket.gethostname())
    return server, port


class ServerHandle:
    """A served run in background threads of this process (Ray actor, tests, benchmarks)."""

    def __init__(self, ps: ParameterServer, security: ServerSecurity) -> None:
        import threading

        self.ps = ps
        self.server, self.port = start_grpc(ps, security)
        self.thread = threading.Thread(target=ps.run_rounds, name="tw-rounds", daemon=True)
        self.thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to finish; True when it did."""
        self.thread.join(timeout)
        return not self.thread.is_alive() and self.ps.finished

    def stop(self) -> None:
        self.ps.stop_event.set()
        with self.ps.cv:
            self.ps.cv.notify_all()
        self.server.stop(grace=0.5).wait(5)
        self.thread.join(10)
