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
from thinwire.faults.crash import crash_point
from thinwire.wire.security import ANY, Authenticator, ServerSecurity, bearer, check_identity
from thinwire.wire.format import GRPC_FRAME, MAX_CHUNK_SIZE, WireError, declared_push_size, server_options
from thinwire.wire.messages import model_messages, parse_chunk

from thinwire.server.app import ParameterServer
from thinwire.server.malloc_policy import tune_malloc
from thinwire.server.secagg_rpc import secagg_step

log = logging.getLogger("thinwire.server")
MAX_BATCH = 100_000            # client ids in one HeartbeatMany / GetTasks call
SECAGG_STEPS = {0: "advertise", 1: "advertise", 2: "share", 3: "share", 4: "unmask", 5: "unmask"}


def _abort(context, err: WireError) -> None:
    context.abort(getattr(grpc.StatusCode, err.code), str(err))


class Servicer(pb2_grpc.ParameterServerServicer):
    def __init__(self, ps: ParameterServer, auth: Authenticator | None = None) -> None:
        self.ps = ps
        self.auth = auth or Authenticator()

    def _who(self, context, cid: int) -> None:
        check_identity(self.auth, context, cid)
        try:
            self.ps.members.check(cid)
        except WireError as e:
            _abort(context, e)

    def Join(self, request, context):
        self._who(context, request.client_id)
        self.ps.members.join(request.client_id, request.hostname)
        o = self.ps.opts
        return pb2.JoinReply(run_name=self.ps.cfg.name, config_json=self.ps.config_json(),
                             heartbeat_interval_s=o.heartbeat_interval, chunk_size=self.ps.cfg.chunk_size,
                             max_update_bytes=self.ps.ingest.max_update_bytes,
                             max_message_bytes=server_options(self.ps.cfg.chunk_size)[0][1],
                             emulate_network=o.emulate, current_round=self.ps.current_round, time_scale=o.time_scale)

    def Leave(self, request, context):
        self._who(context, request.client_id)
        self.ps.members.leave(request.client_id)
        return pb2.LeaveReply()

    def Heartbeat(self, request, context):
        self._who(context, request.client_id)
        known = self.ps.members.touch(request.client_id)
        return pb2.HeartbeatReply(round=self.ps.current_round, known=known, finished=self.ps.finished)

    def GetTask(self, request, context):
        cid = request.client_id
        self._who(context, cid)
        if not self.ps.members.touch(cid):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"client {cid} has not joined; call Join first")
        action, info = self.ps.task_for(cid)
        if action == "finished":
            return pb2.TaskReply(action=pb2.TaskReply.FINISHED, reason="run finished")
        if action == "wait":
            return pb2.TaskReply(action=pb2.TaskReply.WAIT, retry_after_s=self._retry_after(),
                                 reason=info, round=self.ps.current_round)
        return self._train_reply(cid, *info)

    def _retry_after(self) -> float:
        return min(0.5, self.ps.opts.heartbeat_interval)

    def _train_reply(self, cid: int, rs, task, left: float):
        return pb2.TaskReply(action=pb2.TaskReply.TRAIN, round=rs.round, model_version=rs.round,
                             codec=task.codec, seed=task.seed, task_json=json.dumps(task.to_dict()),
                             model_numel=self.ps.numel, deadline_s=left, client_id=cid)

    def _many(self, context, refs) -> list[int]:
        """The client ids of a batched call, each checked as its own call would be: in range, and
        with per-client tokens proven by the call's token or by the id's own token in the request."""
        if len(refs) > MAX_BATCH:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"clients: {len(refs)} ids; allowed: 1..{MAX_BATCH}")
        if not refs:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"clients: empty; allowed: 1..{MAX_BATCH} ids")
        n = self.ps.cfg.clients
        caller = self.auth.identify(bearer(context.invocation_metadata())) if self.auth.enabled else ANY
        ids = []
        for ref in refs:
            cid = ref.client_id
            if not 0 <= cid < n:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"client id {cid} out of range 0..{n - 1}")
            if caller != ANY and cid != caller and not self.auth.allows(ref.token, cid):
                context.abort(grpc.StatusCode.PERMISSION_DENIED if caller is not None else grpc.StatusCode.UNAUTHENTICATED,
                              f"no valid token for client {cid} in the request")
            ids.append(cid)
        return ids

    def HeartbeatMany(self, request, context):
        ids = self._many(context, request.clients)
        unknown = self.ps.members.touch_many(ids)
        return pb2.HeartbeatManyReply(round=self.ps.current_round, finished=self.ps.finished, unknown=unknown)

    def GetTasks(self, request, context):
        ids = self._many(context, request.clients)
        unknown, tasks, finished = self.ps.tasks_for_many(ids)
        return pb2.TasksReply(finished=finished, retry_after_s=self._retry_after(), round=self.ps.current_round,
                              tasks=[self._train_reply(cid, *info) for cid, info in tasks], unknown=unknown)

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
        wire = payload = reserved = 0
        try:
            declared = declared_push_size(context.invocation_metadata())
            if declared is not None:            # room first, then read: a waiting push holds no body
                reserved = ps.ingest.reserve(*declared)
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
            ps.members.touch(first.client_id)
            header = first.header
            held, reserved = reserved, 0        # begin_push takes the reservation over
            ra = ps.ingest.begin_push(first.round, first.client_id, header, held)
            key = (first.round, first.client_id)
            asked, ra.asked = ra.asked, 0
            received = 0
            if len(first.payload):               # the first message may carry a chunk too
                received += 1
                ra.add(first.seq, first.offset, first.payload, first.crc32)
                crash_point("mid_push", first.round)
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
                received += 1
                ra.add(msg.seq, msg.offset, msg.payload, msg.crc32)
                crash_point("mid_push", first.round)
            # A retransmission resends the chunks this server reported missing, lost again or not:
            # counted as the client and the simulator count them (what arrived, if nothing was asked).
            retrans = (asked or received) if header.attempt else 0
            result, missing, holes = ps.ingest.finish_push(key, ra, header, retrans)
            if result == "incomplete":
                ra.asked = len(missing)
            key = None
        except WireError as e:
            if key is not None:
                ps.ingest.abort_push(key)
            elif e.code != "ALREADY_EXISTS":
                with ps.lock:
                    ps.rejected += 1
            log.info("push refused (%s): %s", e.code, e)
            _abort(context, e)
        except Exception:
            if key is not None:
                ps.ingest.abort_push(key)
            raise
        finally:
            ps.ingest.budget.release(reserved)         # a reservation not yet taken over by begin_push
        code = {"accepted": pb2.PushReply.ACCEPTED, "incomplete": pb2.PushReply.INCOMPLETE,
                "late": pb2.PushReply.LATE}[result]
        msg = {"accepted": "update accepted", "late": "round already has its updates; update not used",
               "incomplete": f"{len(missing)} chunks missing; resend them"}[result]
        return pb2.PushReply(result=code, missing=missing, message=msg, payload_bytes=payload, wire_bytes=wire,
                             holes=holes)

    def SecAgg(self, request, context):
        """Secure aggregation's key exchange (thinwire.secagg): its bytes are counted by the round's
        session (per step), which the round engine adds to the round's uplink and downlink."""
        self._who(context, request.client_id)
        self.ps.members.touch(request.client_id)
        session, step = self.ps.session, SECAGG_STEPS.get(request.step)
        if session is not None and step is not None:     # before the step: the last reveal may end the round
            session.count(step, request.ByteSize() + GRPC_FRAME, 0)
        try:
            reply = secagg_step(self.ps, request, pb2)
        except WireError as e:
            log.info("SecAgg refused (%s): client %d: %s", e.code, request.client_id, e)
            _abort(context, e)
        if session is not None and step is not None:
            session.count(step, 0, reply.ByteSize() + GRPC_FRAME)
        return reply

    def Status(self, request, context):
        s = self.ps.status()
        s.update(self.ps.ingest.budget.snapshot())
        return pb2.StatusReply(**s)


def parse_request(name: str, cls, data: bytes, context):
    """A request message parsed inside the handler (the handlers take raw bytes): undecodable
    bytes are the caller's fault, answered INVALID_ARGUMENT with one log line, not INTERNAL with
    a traceback as a failing gRPC deserializer would be."""
    try:
        return cls.FromString(data)
    except Exception as e:                   # protobuf's DecodeError (and anything a broken message raises)
        log.info("%s refused (INVALID_ARGUMENT): undecodable %s of %d bytes (%s)", name, cls.__name__, len(data),
                 type(e).__name__)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"{name}: request is not a valid {cls.__name__} message ({len(data)} bytes)")


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

    def unary(name, fn, req):
        def handler(data, context):
            return fn(parse_request(name, req, data, context), context)
        return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None,
                                                   response_serializer=lambda m: m.SerializeToString())

    def get_model(data, context):
        yield from servicer.GetModel(parse_request("GetModel", pb2.ModelRequest, data, context), context)

    handlers = {
        "Join": unary("Join", servicer.Join, pb2.JoinRequest),
        "Leave": unary("Leave", servicer.Leave, pb2.LeaveRequest),
        "Heartbeat": unary("Heartbeat", servicer.Heartbeat, pb2.HeartbeatRequest),
        "GetTask": unary("GetTask", servicer.GetTask, pb2.TaskRequest),
        "HeartbeatMany": unary("HeartbeatMany", servicer.HeartbeatMany, pb2.ManyRequest),
        "GetTasks": unary("GetTasks", servicer.GetTasks, pb2.ManyRequest),
        "Status": unary("Status", servicer.Status, pb2.StatusRequest),
        "SecAgg": unary("SecAgg", servicer.SecAgg, pb2.SecAggRequest),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(servicer.PushUpdate, request_deserializer=push_in,
                                                           response_serializer=lambda m: m.SerializeToString()),
        "GetModel": grpc.unary_stream_rpc_method_handler(get_model, request_deserializer=None,
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
