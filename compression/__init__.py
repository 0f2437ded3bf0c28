"""thinwire.compression: codecs, error-feedback memories and wire sizing.

    >>> from thinwire import compression
    >>> codec = compression.get("eden", bits=2)
    >>> enc = codec.encode(x, compression.Context(seed=1, round=0, client_id=3))
    >>> x_hat = codec.decode(compression.Encoded.from_bytes(enc.to_bytes()), ctx)
"""
from .base import Codec, Context, Encoded, all_finite, available, derive_seed, from_spec, get, register  # noqa: F401
from . import cast  # noqa: F401  (registers identity, fp16, bf16)
from . import eden, qsgd, randblock, sparse  # noqa: F401  (register eden, qsgd, randblock, topk, randk)
from .feedback import KINDS as FEEDBACK_KINDS, Memory, make_memory  # noqa: F401
from .randblock import block_slices, gather, scatter  # noqa: F401
from .eden import mean_of as eden_mean_of  # noqa: F401
from .stats import nmse, vnmse  # noqa: F401
from .tensors import FlatSpec, flatten, unflatten  # noqa: F401

__all__ = ["Codec", "Context", "Encoded", "all_finite", "available", "from_spec", "get", "register", "FlatSpec", "flatten",
           "unflatten", "Memory", "make_memory", "FEEDBACK_KINDS", "block_slices", "gather", "scatter",
           "eden_mean_of", "nmse", "vnmse"]
