"""One NTK-FL round at the server: pool the uploads, evolve, pick tau on validation data, update.

Engine-independent state object (the `ntk` strategy adapts it to the round engine):

  begin(rnd, w)                  a new round at global weights w
  add(jacobian, labels, outputs) one client's rows, handed to the shuffler (refused, before any
                                 state changes, if malformed or if N would pass --ntk-max-samples)
  finalize() -> (w', metrics)    the kernel step: candidates dw(tau) for every tau on the grid
                                 (mapped back with P when projected), each scored with the REAL
                                 (non-linear) network on the server's validation split; the lowest
                                 loss wins (ties: the smaller tau)

Why a validation split: scoring the linearised outputs would always pick the largest tau (the
linearised loss only decreases along the flow), so the choice needs data the network is run on.
The authors' code scores on the round's raw training inputs, which a real server does not hold;
the paper mentions a server-side validation set instead, which is what this does. The split is a
seeded fraction (--ntk-val-fraction) of the TRAINING pool, never test data: it models a small
proxy set held by the server (its samples may also sit on some client).

Projection (CP-NTK-FL): clients upload J P; the update computed in R^{d'} is mapped back as
dw = P dw~ by the server, which regenerates P from the round's seed. P P^T is unbiased for I, so
dw is an unbiased estimate of the unprojected update direction. The paper has a trusted key server
hide P from the aggregator; here the aggregator knows the seed (it sends it in the task), so the
projection saves bytes but does not hide P from the server.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from thinwire.compression.tensors import FlatSpec
from thinwire.ntk.projection import RandomProjection, projection_seed
from thinwire.ntk import kernel as ntk
from thinwire.ntk.shuffler import Shuffler
from thinwire.task import derive_seed
from thinwire.training import set_flat

PAPER_TAUS = (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1500, 2000)


@dataclass
class NTKSettings:
    loss: str = "ce"
    eta: float = 0.01
    taus: tuple[int, ...] = PAPER_TAUS
    project: int = 0                 # d' (0 = send the full Jacobian)
    subsample: float = 1.0           # fraction of each client's samples
    shuffle: bool = False
    max_samples: int = 8192          # N limit: the kernel is N x N float64
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "NTKSettings":
        return cls(loss=cfg.ntk_loss, eta=cfg.ntk_eta, taus=tuple(cfg.ntk_taus), project=cfg.ntk_project,
                   subsample=cfg.ntk_subsample, shuffle=cfg.ntk_shuffle, max_samples=cfg.ntk_max_samples,
                   seed=cfg.seed)

    def task_params(self, rnd: int) -> dict:
        """What each client needs to do its part (JSON-serialisable, travels in the task)."""
        return {"subsample": self.subsample, "project": self.project,
                "projection_seed": projection_seed(self.seed, rnd) if self.project else 0}


def validation_split(data, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded `fraction` of the training pool (never the test set), at least one sample."""
    ds = getattr(data, "dataset", None)
    if ds is not None and hasattr(ds, "x_train"):
        x, y = ds.x_train, ds.y_train
    else:   # lazily generated clients (synthetic): pool them
        parts = [data.client_data(k) for k in range(data.num_clients)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    n = len(y)
    k = max(1, min(n, round(fraction * n)))
    gen = torch.Generator().manual_seed(derive_seed(seed, "ntk-validation"))
    idx = torch.randperm(n, generator=gen)[:k]
    return x[idx], y[idx]


def network_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> float:
    """The loss the kernel flow minimises, on the real network's logits: mean CE or 0.5 * MSE."""
    if loss == "ce":
        return float(F.cross_entropy(logits, labels))
    return float(0.5 * F.mse_loss(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype)))


@dataclass
class NTKRound:
    settings: NTKSettings
    model: nn.Module
    spec: FlatSpec
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    round: int = -1
    global_vec: torch.Tensor | None = None
    shuffler: Shuffler = field(init=False)
    uploads: int = 0

    def __post_init__(self) -> None:
        self.shuffler = Shuffler(derive_seed(self.settings.seed, "ntk-shuffler"), permute=self.settings.shuffle)

    @property
    def columns(self) -> int:
        """Width of an uploaded Jacobian row: d, or d' when projected."""
        return self.settings.project or self.spec.numel

    def begin(self, rnd: int, global_vec: torch.Tensor) -> None:
        self.round, self.global_vec = rnd, global_vec.detach().float().reshape(-1)
        self.shuffler = Shuffler(self.shuffler.seed, permute=self.settings.shuffle)
        self.uploads = 0

    def add(self, jacobian: torch.Tensor, labels: torch.Tensor, outputs: torch.Tensor) -> None:
        n = jacobian.shape[0] if jacobian.dim() else 0
        want = (n, self.num_classes, self.columns)
        if tuple(jacobian.shape) != want:
            raise ValueError(f"jacobian: shape {tuple(jacobian.shape)}, expected (samples, {self.num_classes}, "
                             f"{self.columns})")
        if tuple(outputs.shape) != (n, self.num_classes) or labels.numel() != n:
            raise ValueError(f"outputs/labels: shapes {tuple(outputs.shape)} / {tuple(labels.shape)} do not match "
                             f"{n} samples x {self.num_classes} classes")
        lab = labels.reshape(-1).double()
        if not bool(torch.isfinite(jacobian).all()) or not bool(torch.isfinite(outputs).all()):
            raise ValueError("jacobian/outputs: contain NaN or Inf; allowed: finite values")
        if bool(((lab != lab.round()) | (lab < 0) | (lab >= self.num_classes)).any()):
            raise ValueError(f"labels: must be class ids 0..{self.num_classes - 1}")
        ntk.check_kernel_size(self.shuffler.rows + n, self.settings.max_samples)
        # copies: a result's tensors may view the sender's receive buffer (zero-copy decode)
        self.shuffler.add({"jacobian": jacobian.to(torch.float32, copy=True), "labels": lab.long(),
                           "outputs": outputs.to(torch.float32, copy=True)})
        self.uploads += 1

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.global_vec is not None, "finalize() before begin()"
        rows = self.shuffler.release(self.round)
        if not rows:
            return self.global_vec.clone(), {"aggregated": 0}
        s = self.settings
        candidates = ntk.evolve(rows["jacobian"], rows["outputs"], rows["labels"], loss=s.loss, eta=s.eta,
                                taus=s.taus, num_classes=self.num_classes)
        if s.project:
            proj = RandomProjection(projection_seed(s.seed, self.round), self.spec.numel, s.project)
            candidates = {tau: proj.back(dw) for tau, dw in candidates.items()}
        tau, scores = ntk.select_tau(candidates, self._val_loss)
        new = self.global_vec + candidates[tau]
        metrics = {"aggregated": self.uploads, "ntk_samples": int(rows["labels"].numel()), "ntk_tau": tau,
                   "ntk_val_loss": scores[tau], "ntk_update_norm": float(candidates[tau].norm())}
        if not math.isfinite(scores[tau]):
            return self.global_vec.clone(), {**metrics, "ntk_tau": 0}
        return new, metrics

    @torch.no_grad()
    def _val_loss(self, dw: torch.Tensor) -> float:
        set_flat(self.model, self.global_vec + dw, self.spec)
        self.model.eval()
        v = network_loss(self.model(self.x_val), self.y_val, self.settings.loss)
        return v if math.isfinite(v) else math.inf
