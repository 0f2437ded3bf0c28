"""Error-feedback memories (none, EF, DEF, DEF-A) that wrap any codec, GRACE-style.

A memory holds one worker's residual e (explicit state, `state_dict()` / `load_state_dict()`, so a
federated client's residual can live in a store and be checkpointed). The update rule is shared by
every kind (DEF spec §4-5, learning rate inside the error):

    p  = e + lr * m          message sent through the compressor C
    e' = p - C(p)            what C dropped is kept for the next step

Kinds differ only in *where* the model is read:

- ``none``: no residual (e stays 0); the plain compressed step.
- ``ef``:   gradient at the shared model x.
- ``def``:  gradient at the detached point y = x - c * e (`eval_point`); c = 0 is EF bit for bit.
- ``defa``: training identical to DEF; the model *output / evaluated* is x - mean_k e_k
  (`output_point`, one extra full-precision average of the residuals). This is the "DEF-A (found)"
  interpretation D of the spec, inferred from the authors' code, not confirmed by the paper. Plain
  DEF (and EF) output the shared model x.

Federated clients call `step(m, codec, ctx, lr)` on their flat update; all-reduce workers run the
compressor themselves (randblock gather / scatter) and call `message` then `update` or
`update_blocks`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import Codec, Context, Encoded
from .randblock import Block, zero_blocks_

KINDS = ("none", "ef", "def", "defa")


# -- pure update rule ------------------------------------------------------------------------
def ef_message(error: torch.Tensor | None, m: torch.Tensor, lr: float = 1.0) -> torch.Tensor:
    """p = e + lr * m (a new tensor; e = None means a zero residual)."""
    p = m * lr if lr != 1.0 else m.clone()
    if error is not None:
        p = error + p
    return p


def ef_residual(p: torch.Tensor, compressed: torch.Tensor) -> torch.Tensor:
    """e' = p - C(p)."""
    return p - compressed


def detached_point(x: torch.Tensor, error: torch.Tensor | None, coeff: float) -> torch.Tensor:
    """y = x - c * e; exactly x when c = 0 or there is no residual yet."""
    if error is None or coeff == 0:
        return x
    return x - coeff * error


def averaged_point(x: torch.Tensor, mean_error: torch.Tensor | None) -> torch.Tensor:
    """x - mean_k e_k: the averaged virtual iterate DEF-A outputs."""
    return x if mean_error is None else x - mean_error


# -- memory objects --------------------------------------------------------------------------
class Memory:
    """One worker's error-feedback state for one flat vector."""

    kind: str = "ef"
    keeps_residual: bool = True
    #: output/evaluation needs mean_k e_k from all workers (one extra uncompressed average)
    needs_error_average: bool = False

    def __init__(self, coeff: float = 0.0) -> None:
        self.coeff = float(coeff)
        self.residual: torch.Tensor | None = None
        self.steps = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, coeff={self.coeff}, steps={self.steps})"

    # rule ------------------------------------------------------------------------------------
    def message(self, m: torch.Tensor, lr: float = 1.0) -> torch.Tensor:
        """The error-compensated message p = e + lr * m to hand to the compressor."""
        if self.residual is not None and self.residual.shape != m.shape:
            raise ValueError(f"update: shape {tuple(m.shape)} differs from the residual's "
                             f"{tuple(self.residual.shape)}; allowed: the same flat layout every step")
        e = self.residual.to(m.device) if self.residual is not None else None
        return ef_message(e, m, lr)

    def update(self, p: torch.Tensor, compressed: torch.Tensor) -> None:
        """Store e' = p - C(p) (given the decoded compressed message)."""
        self.steps += 1
        if self.keeps_residual:
            self.residual = ef_residual(p, compressed)

    def update_blocks(self, p: torch.Tensor, blocks: Sequence[Block]) -> None:
        """Random-block fast path: e' = p with the sent blocks zeroed (p is consumed in place)."""
        self.steps += 1
        if self.keeps_residual:
            self.residual = zero_blocks_(p, blocks)

    def step(self, m: torch.Tensor, codec: Codec, ctx: Context | None = None,
             lr: float = 1.0) -> tuple[Encoded, torch.Tensor]:
        """Client path: compensate, encode, decode locally, keep the residual. Returns (enc, C(p))."""
        p = self.message(m.reshape(-1).float(), lr)
        enc = codec.encode(p, ctx)
        sent = codec.decode(enc, ctx, device=p.device).reshape(-1).float()
        self.update(p, sent)
        return enc, sent

    # where the model is read -------------------------------------------------------------------
    def eval_point(self, x: torch.Tensor) -> torch.Tensor:
        """Point at which this worker evaluates its gradient (x for none/ef)."""
        return x

    def output_point(self, x: torch.Tensor, mean_error: torch.Tensor | None = None) -> torch.Tensor:
        """Model to evaluate / output (x unless DEF-A)."""
        return x

    # state -------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.residual, self.steps = None, 0

    def state_dict(self) -> dict[str, Any]:
        res = None if self.residual is None else self.residual.detach().cpu().clone()
        return {"kind": self.kind, "coeff": self.coeff, "steps": self.steps, "residual": res}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state: kind {state.get('kind')!r} does not match memory kind {self.kind!r}")
        self.coeff = float(state.get("coeff", self.coeff))
        self.steps = int(state.get("steps", 0))
        res = state.get("residual")
        self.residual = None if res is None else torch.as_tensor(res).clone()


class NoMemory(Memory):
    """No error feedback: the message is lr * m and nothing is remembered."""
    kind = "none"
    keeps_residual = False


class EFMemory(Memory):
    """Error feedback with the learning rate inside the residual (DEF spec §4)."""
    kind = "ef"


class DEFMemory(Memory):
    """Detached error feedback: gradients at y = x - c * e (DEF spec §5)."""
    kind = "def"

    def eval_point(self, x: torch.Tensor) -> torch.Tensor:
        e = None if self.residual is None else self.residual.to(x.device)
        return detached_point(x, e, self.coeff)


class DEFAMemory(DEFMemory):
    """DEF-A (interpretation D): DEF training, output at x - mean_k e_k."""
    kind = "defa"
    needs_error_average = True

    def output_point(self, x: torch.Tensor, mean_error: torch.Tensor | None = None) -> torch.Tensor:
        if mean_error is None:  # single worker (or a caller without the average): its own residual
            mean_error = self.residual
        return averaged_point(x, None if mean_error is None else mean_error.to(x.device))


_KIND_CLASSES: dict[str, type[Memory]] = {"none": NoMemory, "ef": EFMemory, "def": DEFMemory, "defa": DEFAMemory}


def make_memory(kind: str, coeff: float | None = None) -> Memory:
    """Build a memory. `coeff` (c) is used by def/defa (default 0.3, the authors' scripts)."""
    cls = _KIND_CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"feedback: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    if coeff is None:
        coeff = 0.3 if kind in ("def", "defa") else 0.0
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not (0.0 <= float(coeff) <= 1.0):
        raise ValueError(f"coeff: got {coeff!r}; allowed: a number in [0, 1]")
    return cls(coeff=float(coeff))
