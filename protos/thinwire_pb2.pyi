from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinRequest(_message.Message):
    __slots__ = ("client_id", "hostname", "pid", "version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    hostname: str
    pid: int
    version: str
    def __init__(self, client_id: _Optional[int] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("run_name", "config_json", "heartbeat_interval_s", "chunk_size", "max_update_bytes", "max_message_bytes", "emulate_network", "current_round", "time_scale")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_UPDATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EMULATE_NETWORK_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    config_json: str
    heartbeat_interval_s: float
    chunk_size: int
    max_update_bytes: int
    max_message_bytes: int
    emulate_network: bool
    current_round: int
    time_scale: float
    def __init__(self, run_name: _Optional[str] = ..., config_json: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., chunk_size: _Optional[int] = ..., max_update_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., emulate_network: bool = ..., current_round: _Optional[int] = ..., time_scale: _Optional[float] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("client_id", "reason")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    reason: str
    def __init__(self, client_id: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("client_id", "round")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("round", "known", "finished")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    round: int
    known: bool
    finished: bool
    def __init__(self, round: _Optional[int] = ..., known: bool = ..., finished: bool = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    def __init__(self, client_id: _Optional[int] = ...) -> None: ...

class ClientRef(_message.Message):
    __slots__ = ("client_id", "round", "token")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    token: str
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...

class ManyRequest(_message.Message):
    __slots__ = ("clients",)
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[ClientRef]
    def __init__(self, clients: _Optional[_Iterable[_Union[ClientRef, _Mapping]]] = ...) -> None: ...

class HeartbeatManyReply(_message.Message):
    __slots__ = ("round", "finished", "unknown")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    round: int
    finished: bool
    unknown: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round: _Optional[int] = ..., finished: bool = ..., unknown: _Optional[_Iterable[int]] = ...) -> None: ...

class TasksReply(_message.Message):
    __slots__ = ("finished", "retry_after_s", "round", "tasks", "unknown")
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    finished: bool
    retry_after_s: float
    round: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskReply]
    unknown: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, finished: bool = ..., retry_after_s: _Optional[float] = ..., round: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskReply, _Mapping]]] = ..., unknown: _Optional[_Iterable[int]] = ...) -> None: ...

class TaskReply(_message.Message):
    __slots__ = ("action", "retry_after_s", "reason", "round", "model_version", "codec", "seed", "task_json", "model_numel", "deadline_s", "client_id")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAIT: _ClassVar[TaskReply.Action]
        TRAIN: _ClassVar[TaskReply.Action]
        FINISHED: _ClassVar[TaskReply.Action]
    WAIT: TaskReply.Action
    TRAIN: TaskReply.Action
    FINISHED: TaskReply.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TASK_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_NUMEL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    action: TaskReply.Action
    retry_after_s: float
    reason: str
    round: int
    model_version: int
    codec: str
    seed: int
    task_json: str
    model_numel: int
    deadline_s: float
    client_id: int
    def __init__(self, action: _Optional[_Union[TaskReply.Action, str]] = ..., retry_after_s: _Optional[float] = ..., reason: _Optional[str] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., codec: _Optional[str] = ..., seed: _Optional[int] = ..., task_json: _Optional[str] = ..., model_numel: _Optional[int] = ..., deadline_s: _Optional[float] = ..., client_id: _Optional[int] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("model_version", "codec", "codec_params_json", "encoded_header", "body_size", "chunk_size", "num_chunks", "body_sha256", "num_samples", "train_loss", "attempt", "metrics", "job", "chunk_crc32")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    ENCODED_HEADER_FIELD_NUMBER: _ClassVar[int]
    BODY_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BODY_SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CRC32_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    codec: str
    codec_params_json: str
    encoded_header: bytes
    body_size: int
    chunk_size: int
    num_chunks: int
    body_sha256: bytes
    num_samples: int
    train_loss: float
    attempt: int
    metrics: _containers.ScalarMap[str, float]
    job: int
    chunk_crc32: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_version: _Optional[int] = ..., codec: _Optional[str] = ..., codec_params_json: _Optional[str] = ..., encoded_header: _Optional[bytes] = ..., body_size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., num_chunks: _Optional[int] = ..., body_sha256: _Optional[bytes] = ..., num_samples: _Optional[int] = ..., train_loss: _Optional[float] = ..., attempt: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., job: _Optional[int] = ..., chunk_crc32: _Optional[_Iterable[int]] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("round", "client_id", "seq", "num_chunks", "offset", "payload", "crc32", "header")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    round: int
    client_id: int
    seq: int
    num_chunks: int
    offset: int
    payload: bytes
    crc32: int
    header: PushHeader
    def __init__(self, round: _Optional[int] = ..., client_id: _Optional[int] = ..., seq: _Optional[int] = ..., num_chunks: _Optional[int] = ..., offset: _Optional[int] = ..., payload: _Optional[bytes] = ..., crc32: _Optional[int] = ..., header: _Optional[_Union[PushHeader, _Mapping]] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("result", "missing", "message", "payload_bytes", "wire_bytes", "holes")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACCEPTED: _ClassVar[PushReply.Result]
        INCOMPLETE: _ClassVar[PushReply.Result]
        LATE: _ClassVar[PushReply.Result]
    ACCEPTED: PushReply.Result
    INCOMPLETE: PushReply.Result
    LATE: PushReply.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIRE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOLES_FIELD_NUMBER: _ClassVar[int]
    result: PushReply.Result
    missing: _containers.RepeatedScalarFieldContainer[int]
    message: str
    payload_bytes: int
    wire_bytes: int
    holes: int
    def __init__(self, result: _Optional[_Union[PushReply.Result, str]] = ..., missing: _Optional[_Iterable[int]] = ..., message: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., wire_bytes: _Optional[int] = ..., holes: _Optional[int] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("client_id", "model_version", "codec")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    model_version: int
    codec: str
    def __init__(self, client_id: _Optional[int] = ..., model_version: _Optional[int] = ..., codec: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("model_version", "round", "seq", "num_chunks", "offset", "payload", "crc32", "encoded_header", "body_size", "body_sha256")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    ENCODED_HEADER_FIELD_NUMBER: _ClassVar[int]
    BODY_SIZE_FIELD_NUMBER: _ClassVar[int]
    BODY_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    round: int
    seq: int
    num_chunks: int
    offset: int
    payload: bytes
    crc32: int
    encoded_header: bytes
    body_size: int
    body_sha256: bytes
    def __init__(self, model_version: _Optional[int] = ..., round: _Optional[int] = ..., seq: _Optional[int] = ..., num_chunks: _Optional[int] = ..., offset: _Optional[int] = ..., payload: _Optional[bytes] = ..., crc32: _Optional[int] = ..., encoded_header: _Optional[bytes] = ..., body_size: _Optional[int] = ..., body_sha256: _Optional[bytes] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("run_name", "round", "rounds_total", "phase", "model_version", "clients_joined", "clients_alive", "selected", "accepted", "bytes_up_payload", "bytes_up_wire", "bytes_down_payload", "bytes_down_wire", "accuracy", "loss", "finished", "rejected_pushes", "reassembly_bytes", "reassembly_buffers", "reassembly_pooled_bytes")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_JOINED_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_WIRE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_WIRE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    REASSEMBLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REASSEMBLY_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    REASSEMBLY_POOLED_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    round: int
    rounds_total: int
    phase: str
    model_version: int
    clients_joined: int
    clients_alive: int
    selected: _containers.RepeatedScalarFieldContainer[int]
    accepted: _containers.RepeatedScalarFieldContainer[int]
    bytes_up_payload: int
    bytes_up_wire: int
    bytes_down_payload: int
    bytes_down_wire: int
    accuracy: float
    loss: float
    finished: bool
    rejected_pushes: int
    reassembly_bytes: int
    reassembly_buffers: int
    reassembly_pooled_bytes: int
    def __init__(self, run_name: _Optional[str] = ..., round: _Optional[int] = ..., rounds_total: _Optional[int] = ..., phase: _Optional[str] = ..., model_version: _Optional[int] = ..., clients_joined: _Optional[int] = ..., clients_alive: _Optional[int] = ..., selected: _Optional[_Iterable[int]] = ..., accepted: _Optional[_Iterable[int]] = ..., bytes_up_payload: _Optional[int] = ..., bytes_up_wire: _Optional[int] = ..., bytes_down_payload: _Optional[int] = ..., bytes_down_wire: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., finished: bool = ..., rejected_pushes: _Optional[int] = ..., reassembly_bytes: _Optional[int] = ..., reassembly_buffers: _Optional[int] = ..., reassembly_pooled_bytes: _Optional[int] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("client_id", "round", "step", "c_public", "s_public", "shares", "reveals")
    class Step(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ADVERTISE: _ClassVar[SecAggRequest.Step]
        ROSTER: _ClassVar[SecAggRequest.Step]
        SHARE_KEYS: _ClassVar[SecAggRequest.Step]
        SHARES: _ClassVar[SecAggRequest.Step]
        SURVIVORS: _ClassVar[SecAggRequest.Step]
        REVEAL: _ClassVar[SecAggRequest.Step]
    ADVERTISE: SecAggRequest.Step
    ROSTER: SecAggRequest.Step
    SHARE_KEYS: SecAggRequest.Step
    SHARES: SecAggRequest.Step
    SURVIVORS: SecAggRequest.Step
    REVEAL: SecAggRequest.Step
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    C_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    S_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    REVEALS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    round: int
    step: SecAggRequest.Step
    c_public: bytes
    s_public: bytes
    shares: _containers.RepeatedCompositeFieldContainer[SecAggShare]
    reveals: _containers.RepeatedCompositeFieldContainer[SecAggReveal]
    def __init__(self, client_id: _Optional[int] = ..., round: _Optional[int] = ..., step: _Optional[_Union[SecAggRequest.Step, str]] = ..., c_public: _Optional[bytes] = ..., s_public: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[SecAggShare, _Mapping]]] = ..., reveals: _Optional[_Iterable[_Union[SecAggReveal, _Mapping]]] = ...) -> None: ...

class SecAggShare(_message.Message):
    __slots__ = ("peer", "sealed", "commit_s", "commit_b")
    PEER_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    COMMIT_S_FIELD_NUMBER: _ClassVar[int]
    COMMIT_B_FIELD_NUMBER: _ClassVar[int]
    peer: int
    sealed: bytes
    commit_s: bytes
    commit_b: bytes
    def __init__(self, peer: _Optional[int] = ..., sealed: _Optional[bytes] = ..., commit_s: _Optional[bytes] = ..., commit_b: _Optional[bytes] = ...) -> None: ...

class SecAggReveal(_message.Message):
    __slots__ = ("dealer", "kind", "share")
    DEALER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    dealer: int
    kind: str
    share: bytes
    def __init__(self, dealer: _Optional[int] = ..., kind: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggKeys(_message.Message):
    __slots__ = ("client_id", "c_public", "s_public")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    C_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    S_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    c_public: bytes
    s_public: bytes
    def __init__(self, client_id: _Optional[int] = ..., c_public: _Optional[bytes] = ..., s_public: _Optional[bytes] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("ready", "retry_after_s", "roster", "shares", "clients", "abandoned", "message")
    READY_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    retry_after_s: float
    roster: _containers.RepeatedCompositeFieldContainer[SecAggKeys]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggShare]
    clients: _containers.RepeatedScalarFieldContainer[int]
    abandoned: bool
    message: str
    def __init__(self, ready: bool = ..., retry_after_s: _Optional[float] = ..., roster: _Optional[_Iterable[_Union[SecAggKeys, _Mapping]]] = ..., shares: _Optional[_Iterable[_Union[SecAggShare, _Mapping]]] = ..., clients: _Optional[_Iterable[int]] = ..., abandoned: bool = ..., message: _Optional[str] = ...) -> None: ...
