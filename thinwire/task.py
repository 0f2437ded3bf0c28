"""The unit of client work both ends agree on: a task (what one client does in one round) and the
wire form of its result (named tensors, each an `Encoded`).

Lives in the core (not in client/ or server/) because the server builds tasks and decodes results
while clients execute them; neither side imports the other.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch

from thinwire import compression
from thinwire.compression.base import derive_seed  # noqa: F401  (the project's one seed derivation)

#: name of the single tensor of a result sent as a plain `Encoded` (no bundle): the model delta.
DEFAULT_TENSOR = "delta"
BUNDLE = "bundle"
_JSON_TYPES = (str, int, float, bool, type(None))


@dataclass
class Task:
    """What the server asks one client to do (travels as JSON in served mode).

    `kind` names a client task kind (thinwire.client.kinds); `params` holds the kind's own fields,
    plain JSON values only, so every field survives serialisation. `job` is the job the result
    belongs to (-1: this round's); strategies with delayed jobs (gradient coding) set it."""
    kind: str
    round: int
    client_id: int
    seed: int = 0
    codec: str = "identity"
    feedback: str = "none"
    feedback_coeff: float = 0.3
    job: int = -1
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_json("params", self.params)

    @classmethod
    def for_config(cls, cfg, rnd: int, client_id: int, kind: str = "train", **params: Any) -> "Task":
        """A task with the run's shared settings (seed, codec, error feedback) and `params`."""
        return cls(kind=kind, round=rnd, client_id=client_id, seed=cfg.seed, codec=cfg.codec, feedback=cfg.feedback,
                   feedback_coeff=cfg.feedback_coeff, params=dict(params))

    @property
    def job_id(self) -> int:
        return self.round if self.job < 0 else self.job

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Task":
        """Rebuild a task; raises ValueError naming the bad field (a task can come off the wire)."""
        if not isinstance(d, Mapping):
            raise ValueError("task: expected a JSON object")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"task: unknown fields {sorted(unknown)}; allowed: {', '.join(cls.__dataclass_fields__)}")
        try:
            t = cls(**d)
        except TypeError as e:
            raise ValueError(f"task: {e}") from None
        for name, kind in (("kind", str), ("codec", str), ("feedback", str), ("round", int), ("client_id", int),
                           ("seed", int), ("job", int)):
            if not isinstance(getattr(t, name), kind) or isinstance(getattr(t, name), bool):
                raise ValueError(f"task: field {name} must be {kind.__name__}")
        if not isinstance(t.params, dict):
            raise ValueError("task: field params must be an object")
        return t

    def codec_context(self, name: str = DEFAULT_TENSOR, segments: tuple[int, ...] | None = None) -> compression.Context:
        """Shared randomness of this (round, client, tensor): the server rebuilds the same one to
        decode. The model delta keeps the plain (seed, round, client) context."""
        seed = self.seed if name == DEFAULT_TENSOR else derive_seed(self.seed, "tensor", name)
        return compression.Context(seed=seed, round=self.round, client_id=self.client_id, segments=segments)

    def train_seed(self) -> int:
        """Seed of the client's own randomness in this task (batch order, subsampling)."""
        return derive_seed(self.seed, self.kind, self.round, self.client_id, self.job_id)


def _check_json(name: str, v: Any, depth: int = 0) -> None:
    if depth > 16:
        raise ValueError(f"task: {name} nests deeper than 16 levels")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValueError(f"task: {name} keys must be strings")
            _check_json(f"{name}.{k}", x, depth + 1)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _check_json(name, x, depth + 1)
    elif not isinstance(v, _JSON_TYPES):
        raise ValueError(f"task: {name} holds a {type(v).__name__}; allowed: JSON values (str, number, bool, "
                         "list, object)")


# -- results on the wire ---------------------------------------------------------------------
def pack_result(items: Mapping[str, tuple[compression.Encoded, Sequence[int], bool]]) -> compression.Encoded:
    """Named encodings -> one `Encoded` for the wire. items: name -> (encoded, shape, model_shaped).

    A lone model-shaped tensor named "delta" travels as its own `Encoded` (the FedAvg fast path:
    zero-copy decode on the server). Anything else is a bundle: an `Encoded` whose header lists the
    items and whose body is their sections back to back, so chunking, checksums and decoding around
    lost chunks work unchanged for any result."""
    if list(items) == [DEFAULT_TENSOR] and items[DEFAULT_TENSOR][2] and len(items[DEFAULT_TENSOR][1]) == 1:
        return items[DEFAULT_TENSOR][0]
    meta, sections = [], {}
    for name, (enc, shape, model_shaped) in items.items():
        meta.append({"name": name, "codec": enc.codec, "params": enc.params, "numel": enc.numel, "dtype": enc.dtype,
                     "meta": enc.meta, "shape": [int(s) for s in shape], "model_shaped": bool(model_shaped),
                     "sections": list(enc.sections)})
        for sec, data in enc.sections.items():
            sections[f"{name}/{sec}"] = data
    numel = sum(m["numel"] for m in meta)
    return compression.Encoded(codec=BUNDLE, params={}, numel=numel, meta={"items": meta}, sections=sections)


@dataclass
class WireItem:
    """One named tensor of a received result, still encoded."""
    name: str
    enc: compression.Encoded
    shape: tuple[int, ...]
    model_shaped: bool


def unpack_result(payload: bytes | memoryview, holes: Sequence[tuple[int, int]] = ()) -> list[WireItem]:
    """The inverse of `pack_result`; holes (body byte ranges lost in transit) are mapped onto each
    item's own sections. Raises ValueError for anything malformed."""
    outer = compression.Encoded.from_bytes(payload, holes=holes)
    if outer.codec != BUNDLE:
        return [WireItem(DEFAULT_TENSOR, outer, (outer.numel,), True)]
    items = outer.meta.get("items")
    if not isinstance(items, list) or not items:
        raise ValueError("result: bundle lists no items")
    out, seen = [], set()
    for m in items:
        try:
            name = str(m["name"])
            secs = [str(s) for s in m["sections"]]
            shape = tuple(int(s) for s in m["shape"])
            enc = compression.Encoded(codec=str(m["codec"]), params=dict(m["params"]), numel=int(m["numel"]),
                                      dtype=str(m["dtype"]), meta=dict(m["meta"]),
                                      sections={s: outer.sections[f"{name}/{s}"] for s in secs})
            model_shaped = bool(m["model_shaped"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"result: malformed bundle item ({e})") from None
        if name in seen:
            raise ValueError(f"result: tensor {name!r} appears twice")
        seen.add(name)
        if _numel(shape) != enc.numel:
            raise ValueError(f"result: tensor {name!r} has shape {list(shape)} but {enc.numel} elements")
        inner = enc.section_offsets()
        for s in secs:       # the outer section's holes, moved to where that section sits in the item
            enc.holes += [(a + inner[s][0], b + inner[s][0]) for a, b in outer.section_holes(f"{name}/{s}")]
        out.append(WireItem(name, enc, shape, model_shaped))
    return out


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        if s < 0:
            return -1
        n *= s
    return n


def decode_result(payload: bytes | memoryview, task: Task, segments: tuple[int, ...] | None,
                  holes: Sequence[tuple[int, int]] = ()) -> dict[str, torch.Tensor]:
    """Server side: result bytes (possibly with holes) -> named float tensors in their shapes."""
    return decode_result_split(payload, task, segments, holes)[0]


def decode_result_split(payload: bytes | memoryview, task: Task, segments: tuple[int, ...] | None,
                        holes: Sequence[tuple[int, int]] = (), keep_encoded: Any = None
                        ) -> tuple[dict[str, torch.Tensor], dict[str, compression.Encoded]]:
    """`decode_result`, except the items `keep_encoded(name, enc)` accepts stay encoded (second dict)."""
    out, kept = {}, {}
    for item in unpack_result(payload, holes):
        if keep_encoded is not None and keep_encoded(item.name, item.enc):
            kept[item.name] = item.enc
            continue
        codec = compression.get(item.enc.codec, **item.enc.params)
        ctx = task.codec_context(item.name, segments if item.model_shaped else None)
        out[item.name] = codec.decode(item.enc, ctx).reshape(item.shape)
    return out, kept


def result_header(raw: bytes) -> dict[str, Any]:
    """Parse the JSON header of a result's `Encoded` prefix+header bytes (no body) for early checks:
    returns {"items": [(name, codec, numel, model_shaped)], "body_size": int}. Raises ValueError."""
    import struct

    if len(raw) < 8 or raw[:3] != compression.base.MAGIC:
        raise ValueError("encoded_header: not a thinwire Encoded header (bad magic)")
    _, version, hlen = struct.unpack_from("<3sBI", raw)
    if version != compression.base.FORMAT_VERSION or 8 + hlen != len(raw):
        raise ValueError(f"encoded_header: version {version} / length {hlen} do not match")
    try:
        h = compression.base.parse_header_json(raw[8:])
        body = sum(int(s) for _, s in h["sections"])
        if h["codec"] == BUNDLE:
            items = [(str(m["name"]), str(m["codec"]), int(m["numel"]), bool(m["model_shaped"]))
                     for m in h["meta"]["items"]]
        else:
            items = [(DEFAULT_TENSOR, str(h["codec"]), int(h["numel"]), True)]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"encoded_header: malformed JSON header ({e})") from None
    return {"items": items, "body_size": body}
