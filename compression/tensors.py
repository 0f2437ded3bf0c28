"""Flatten a model (named tensors) into one vector and back; the segments feed per-tensor codecs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch


@dataclass(frozen=True)
class FlatSpec:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def segments(self) -> tuple[int, ...]:
        out = []
        for s in self.shapes:
            n = 1
            for d in s:
                n *= d
            out.append(n)
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.segments)


def flatten(named: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, FlatSpec]:
    items = list(named.items()) if isinstance(named, Mapping) else list(named)
    spec = FlatSpec(tuple(n for n, _ in items), tuple(tuple(t.shape) for _, t in items))
    if not items:
        return torch.zeros(0), spec
    return torch.cat([t.detach().reshape(-1).float() for _, t in items]), spec


def unflatten(vec: torch.Tensor, spec: FlatSpec) -> dict[str, torch.Tensor]:
    if vec.numel() != spec.numel:
        raise ValueError(f"vector: has {vec.numel()} elements, model expects {spec.numel}")
    out, pos = {}, 0
    for name, shape, n in zip(spec.names, spec.shapes, spec.segments):
        out[name] = vec[pos:pos + n].view(shape)
        pos += n
    return out
