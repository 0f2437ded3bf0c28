"""The unit of client work both ends agree on: a round's task and how its update is decoded.

Lives in the core (not in client/ or server/) because the server builds tasks and decodes updates
while clients execute them; neither side imports the other.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch

from thinwire import compression


def derive_seed(*parts: Any) -> int:
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass
class TaskSpec:
    """What the server asks one client to do in one round (travels as JSON in served mode)."""
    round: int
    client_id: int
    seed: int = 0
    lr: float = 0.05
    local_epochs: int = 1
    batch_size: int = 16
    momentum: float = 0.0
    weight_decay: float = 0.0
    codec: str = "identity"
    feedback: str = "none"
    feedback_coeff: float = 0.3

    @classmethod
    def from_config(cls, cfg, rnd: int, client_id: int, **overrides: Any) -> "TaskSpec":
        t = cls(round=rnd, client_id=client_id, seed=cfg.seed, lr=cfg.lr * cfg.lr_decay ** rnd, local_epochs=cfg.local_epochs,
                batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay, codec=cfg.codec,
                feedback=cfg.feedback, feedback_coeff=cfg.feedback_coeff)
        for k, v in overrides.items():
            setattr(t, k, v)
        return t

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def codec_context(self, segments: tuple[int, ...] | None = None) -> compression.Context:
        """Shared randomness of this (round, client): the server rebuilds the same one to decode."""
        return compression.Context(seed=self.seed, round=self.round, client_id=self.client_id, segments=segments)


def decode_update(payload: bytes, task: TaskSpec, segments: tuple[int, ...] | None,
                  holes: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """Server side: bytes (possibly with holes) back to the client's flat delta."""
    enc = compression.Encoded.from_bytes(payload, holes=holes or ())
    codec = compression.get(enc.codec, **enc.params)
    return codec.decode(enc, task.codec_context(segments)).reshape(-1).float()
