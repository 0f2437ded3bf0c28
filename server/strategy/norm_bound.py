"""Per-client update norm bound: clip each update to L2 norm C, or refuse one above C.

Works inside the incremental fold (one update at a time, no buffering), so any FedAvg-family
strategy can bound its clients: `--norm-bound C --norm-bound-mode clip|reject`. A refused update
raises ValueError before anything is folded (the engine counts it in `rejected_pushes`, the served
client is told why) and is counted here as `norm_rejected`; clipped ones as `norm_clipped`.
"""
from __future__ import annotations

import torch

MODES = ("clip", "reject")


def clip_to_norm(update: torch.Tensor, bound: float) -> tuple[torch.Tensor, float]:
    """(update scaled to L2 norm <= bound, its original norm). Scaling is by min(1, C / ||u||)."""
    norm = float(torch.linalg.vector_norm(update.double()))
    if norm <= bound or norm == 0.0:
        return update, norm
    return update * (bound / norm), norm


class NormBound:
    """The per-round counters of one bound C in one mode."""

    def __init__(self, bound: float, mode: str = "clip") -> None:
        if not bound > 0:
            raise ValueError(f"norm_bound: {bound}; allowed: > 0")
        if mode not in MODES:
            raise ValueError(f"norm_bound_mode: {mode!r}; allowed: {', '.join(MODES)}")
        self.bound, self.mode = float(bound), mode
        self.clipped = self.rejected = 0
        self.norms: list[float] = []

    @classmethod
    def from_config(cls, cfg) -> "NormBound | None":
        c = float(getattr(cfg, "norm_bound", 0.0) or 0.0) if cfg is not None else 0.0
        return cls(c, getattr(cfg, "norm_bound_mode", "clip")) if c > 0 else None

    def reset(self) -> None:
        self.clipped = self.rejected = 0
        self.norms = []

    def apply(self, update: torch.Tensor) -> torch.Tensor:
        """The bounded update; in reject mode an update above C raises ValueError (counted)."""
        if not bool(torch.isfinite(update).all()):
            self.rejected += 1
            raise ValueError("update: holds NaN or Inf; refused by the norm bound")
        out, norm = clip_to_norm(update, self.bound)
        self.norms.append(norm)
        if out is update:
            return update
        if self.mode == "reject":
            self.rejected += 1
            raise ValueError(f"update: L2 norm {norm:.4g} exceeds the norm bound {self.bound:g} (--norm-bound-mode reject)")
        self.clipped += 1
        return out

    def metrics(self) -> dict[str, float]:
        """Counts of the round, and the median norm seen (to choose C: a little above the honest median)."""
        norms = sorted(self.norms)
        med = (norms[(len(norms) - 1) // 2] + norms[len(norms) // 2]) / 2 if norms else None
        return {"norm_clipped": self.clipped, "norm_rejected": self.rejected, "norm_median": med}
