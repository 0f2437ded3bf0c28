"""The codec contract: Context, Encoded (wire format) and the Codec interface.

Every compressor in thinwire encodes a flat 1-D tensor into an `Encoded` and decodes it back.
`Encoded` is plain data with a versioned binary layout (no pickle), so the bytes counted in
simulation are exactly the bytes that would cross a socket.

Wire layout of `Encoded.to_bytes()` (all integers little-endian):

    magic  b"TWE"            3 bytes
    version u8               1 byte   (FORMAT_VERSION)
    header_len u32           4 bytes
    header  JSON (utf-8)     header_len bytes: codec, params, numel, dtype, meta, section sizes
    body                     the concatenated sections, in header order

The header is small and must arrive intact (it is sent reliably / duplicated by the transport);
the body is what gets chunked and may lose chunks (`holes`) under the fault model.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

MAGIC = b"TWE"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<3sBI")
_SUPPORTED_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                     "float64": torch.float64}


def parse_header_json(raw: bytes | memoryview) -> dict[str, Any]:
    """The JSON header of an Encoded as a dict; ValueError for anything else. Headers come off the
    wire, so JSON nested too deeply for the parser is a ValueError too, never a RecursionError."""
    try:
        header = json.loads(bytes(raw))
    except RecursionError:
        raise ValueError("header JSON nested too deeply; allowed: a flat object of codec fields") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"header JSON is a {type(header).__name__}; allowed: an object")
    return header


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _SUPPORTED_DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"dtype: unsupported tensor dtype {dtype}; allowed: {', '.join(_SUPPORTED_DTYPES)}")


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _SUPPORTED_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: unknown dtype {name!r}; allowed: {', '.join(_SUPPORTED_DTYPES)}") from None


def derive_seed(*parts: Any) -> int:
    """The project's one seed derivation: a 63-bit seed from any parts, identical on every host and
    Python version (blake2b of the parts joined by "/"), so both ends of a wire agree."""
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Context:
    """Shared randomness and identity known to both ends of a transfer.

    Rotations and random selections are regenerated from (seed, round, client_id, tag), so no
    indices travel. `segments` gives the numels of the tensors a flat vector was built from, for
    codecs that work per tensor (random block). `shared` makes the randomness independent of the
    client id (e.g. one rotation for all clients, random blocks identical on all workers).
    """

    seed: int = 0
    round: int = 0
    client_id: int = 0
    segments: tuple[int, ...] | None = None
    shared: bool = False

    def derive_seed(self, tag: str) -> int:
        """A 63-bit seed unique to (seed, round, client unless shared, tag); same on every host."""
        return derive_seed(self.seed, self.round, -1 if self.shared else self.client_id, tag)

    def generator(self, tag: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch.Generator seeded from `derive_seed(tag)`.

        CPU generators are used for every random draw that must match across hosts; codecs draw on
        CPU and move results to the tensor's device, so CPU and CUDA ends agree.
        """
        g = torch.Generator(device=device)
        g.manual_seed(self.derive_seed(tag))
        return g


@dataclass
class Encoded:
    """One encoded tensor: plain data that serialises to bytes and knows its exact wire size."""

    codec: str
    params: dict[str, Any]
    numel: int
    dtype: str = "float32"
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bytes | memoryview] = field(default_factory=dict)
    # Byte ranges [start, end) of the body lost in transit (filled with zeros). Only codecs with
    # `supports_holes` decode around them; the transport fills this in, never the encoder.
    holes: list[tuple[int, int]] = field(default_factory=list)

    # -- sizes -----------------------------------------------------------------------------
    def header_bytes(self) -> bytes:
        header = {
            "codec": self.codec,
            "params": self.params,
            "numel": self.numel,
            "dtype": self.dtype,
            "meta": self.meta,
            "sections": [[name, len(data)] for name, data in self.sections.items()],
        }
        return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()

    @property
    def body_size(self) -> int:
        return sum(len(d) for d in self.sections.values())

    @property
    def nbytes(self) -> int:
        """Exact length of `to_bytes()`."""
        return _PREFIX.size + len(self.header_bytes()) + self.body_size

    @property
    def header_size(self) -> int:
        return _PREFIX.size + len(self.header_bytes())

    def section_offsets(self) -> dict[str, tuple[int, int]]:
        """Body-relative [start, end) of every section, for mapping holes to sections."""
        out, pos = {}, 0
        for name, data in self.sections.items():
            out[name] = (pos, pos + len(data))
            pos += len(data)
        return out

    def section_holes(self, name: str) -> list[tuple[int, int]]:
        """Holes that fall inside section `name`, relative to that section's start."""
        start, end = self.section_offsets()[name]
        out = []
        for a, b in self.holes:
            lo, hi = max(a, start), min(b, end)
            if lo < hi:
                out.append((lo - start, hi - start))
        return out

    # -- bytes -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        header = self.header_bytes()
        return b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header, *self.sections.values()])

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, holes: Sequence[tuple[int, int]] = ()) -> "Encoded":
        """Parse a payload; `holes` are body-relative byte ranges that did not arrive."""
        data = memoryview(data)
        if len(data) < _PREFIX.size:
            raise ValueError("payload: too short to be a thinwire Encoded")
        magic, version, hlen = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise ValueError("payload: bad magic, not a thinwire Encoded")
        if version != FORMAT_VERSION:
            raise ValueError(f"payload: format version {version} unsupported; allowed: {FORMAT_VERSION}")
        end = _PREFIX.size + hlen
        if end > len(data):
            raise ValueError("payload: truncated header")
        try:
            header = parse_header_json(data[_PREFIX.size:end])
            sections, pos = {}, end
            for name, size in header["sections"]:
                if size < 0 or pos + size > len(data):
                    raise ValueError("section overruns payload")
                # Zero-copy views into `data`: decoding copies once into a tensor; call to_bytes() to own.
                sections[str(name)] = data[pos:pos + size]
                pos += size
            if pos != len(data):
                raise ValueError("trailing bytes after last section")
            return cls(codec=str(header["codec"]), params=dict(header["params"]), numel=int(header["numel"]),
                       dtype=str(header["dtype"]), meta=dict(header["meta"]), sections=sections,
                       holes=[(int(a), int(b)) for a, b in holes])
        except (KeyError, TypeError, json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"payload: malformed Encoded header ({e})") from None


class Codec:
    """A compressor: a pure pair of functions over flat tensors, configured by its params.

    Subclasses set `name`, validate their params in `__init__`, and implement `_encode` /
    `_decode`. `encode` checks the input once for every codec (non-empty, finite, float).
    """

    name: ClassVar[str] = ""
    #: decodes around lost body bytes and stays unbiased (EDEN); others need retransmission.
    supports_holes: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # public API ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, ctx: Context | None = None) -> Encoded:
        x = check_input(x)
        enc = self._encode(x.reshape(-1), ctx or Context())
        enc.codec, enc.params, enc.numel, enc.dtype = self.name, dict(self.params), x.numel(), dtype_name(x.dtype)
        return enc

    def decode(self, enc: Encoded, ctx: Context | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        if enc.codec != self.name:
            raise ValueError(f"codec: payload was encoded with {enc.codec!r}, not {self.name!r}")
        if enc.holes and not self.supports_holes:
            raise ValueError(f"holes: codec {self.name!r} cannot decode with lost chunks; use retransmit")
        out = self._decode(enc, ctx or Context(), torch.device(device))
        return out.to(dtype_from_name(enc.dtype))

    def wire_bits_per_coord(self, enc: Encoded) -> float:
        """Bits per coordinate actually on the wire (header included)."""
        return 8.0 * enc.nbytes / max(1, enc.numel)

    # to implement -------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def all_finite(x: torch.Tensor) -> bool:
    """True when `x` holds no NaN or Inf. A NaN or Inf element always makes the sum non-finite, so
    one vectorised sum (no mask, no copy) settles the common case; only a sum that overflowed on
    finite values needs the element-wise test."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def check_input(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("input: empty tensor; allowed: a tensor with at least one element")
    if not x.is_floating_point():
        raise ValueError(f"input: dtype {x.dtype} is not floating point; allowed: float32, float16, bfloat16")
    dtype_name(x.dtype)
    if not all_finite(x):
        raise ValueError("input: tensor contains NaN or Inf; allowed: finite values")
    return x


def new_encoded(**sections: bytes) -> Encoded:
    """An Encoded with sections filled; `Codec.encode` stamps codec/params/numel/dtype."""
    return Encoded(codec="", params={}, numel=0, sections=dict(sections))


# -- registry -------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator adding a codec to the registry under `cls.name`."""
    if not cls.name:
        raise TypeError("codec class needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> Codec:
    """Build a codec by name: `get("eden", bits=2)`. Unknown names raise ValueError."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"codec: unknown codec {name!r}; allowed: {', '.join(available())}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"codec {name}: bad parameters {params} ({e})") from None


def from_spec(spec: str | Mapping[str, Any]) -> Codec:
    """Build a codec from "eden:bits=2,seed=3", {"name": "eden", "bits": 2}, or a user codec class
    "package.module:Class:k=v" / "path/file.py:Class" (imported and registered under its name)."""
    if isinstance(spec, Mapping):
        params = dict(spec)
        return get(str(params.pop("name")), **params)
    from thinwire.plugins import is_plugin_name, load_object
    if is_plugin_name(spec):           # "package.module:Class[:k=v,...]": a user codec class
        module, _, rest = spec.partition(":")
        cls_name, _, rest = rest.partition(":")
        cls = load_object(f"{module}:{cls_name}")
        if not (isinstance(cls, type) and issubclass(cls, Codec) and cls.name):
            raise ValueError(f"codec: {module}:{cls_name} is not a named thinwire Codec subclass")
        register(cls)
        name = cls.name
    else:
        name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"codec: bad parameter {item!r} in {spec!r}; expected key=value")
        params[key.strip()] = _parse_scalar(value.strip())
    return get(name.strip(), **params)


def _parse_scalar(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v
