"""Lossless and cast baselines: identity (fp32 as given) and fp16 / bf16 down-casts."""
from __future__ import annotations

import numpy as np
import torch

from .base import Codec, Context, Encoded, new_encoded, register


def tensor_to_bytes(x: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a contiguous CPU tensor (bf16 via its int16 view)."""
    x = x.detach().contiguous().cpu()
    if x.dtype == torch.bfloat16:
        x = x.view(torch.int16)
    return x.numpy().tobytes()


def tensor_from_bytes(data: bytes | bytearray | memoryview, dtype: torch.dtype,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor of `data`'s little-endian values. Read-only data (bytes) is copied; writable data
    (a bytearray or a view of one, e.g. the server's reassembly buffer) is shared, as with
    `numpy.frombuffer`: the caller keeps it unchanged while the tensor is in use."""
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                torch.bfloat16: np.int16, torch.int64: np.int64, torch.int32: np.int32, torch.uint8: np.uint8}[dtype]
    arr = np.frombuffer(data, dtype=np_dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).to(device)


class _Cast(Codec):
    wire_dtype: torch.dtype = torch.float32

    def __init__(self) -> None:
        super().__init__()

    def _encode(self, x: torch.Tensor, ctx: Context) -> Encoded:
        return new_encoded(values=tensor_to_bytes(x.to(self.wire_dtype)))

    def _decode(self, enc: Encoded, ctx: Context, device: torch.device) -> torch.Tensor:
        return tensor_from_bytes(enc.sections["values"], self.wire_dtype, device).float()


@register
class Identity(_Cast):
    """Dense fp32: the reference every ratio is measured against."""
    name = "identity"
    wire_dtype = torch.float32


@register
class FP16(_Cast):
    name = "fp16"
    wire_dtype = torch.float16


@register
class BF16(_Cast):
    name = "bf16"
    wire_dtype = torch.bfloat16
