"""A simulation worker: one Ray actor that executes many virtual clients per round (Flower-style
batching). It builds the data set and model once from the run config; virtual clients are just
(client id, task, state) triples passed in, so it holds no per-client state itself."""
from __future__ import annotations

from typing import Any

import torch

from thinwire.client.update import ClientResult, ClientState, run_client_round
from thinwire.config import RunConfig, build
from thinwire.data import federate
from thinwire.models import build_model
from thinwire.task import TaskSpec


def make_dataset(cfg: RunConfig):
    return federate(cfg.dataset, cfg.clients, cfg.partition, alpha=cfg.alpha, shards_per_client=cfg.shards_per_client,
                    seed=cfg.seed, path=cfg.data_path or None, synthetic_alpha=cfg.synthetic_alpha,
                    synthetic_beta=cfg.synthetic_beta, standardize=cfg.standardize)


def make_model(cfg: RunConfig, ds) -> torch.nn.Module:
    return build_model(cfg.model, tuple(ds.input_shape), ds.num_classes, hidden=tuple(cfg.hidden))


class SimWorker:
    """Plain class; the engine wraps it with ray.remote so it can also run in-process in tests."""

    def __init__(self, cfg_dict: dict[str, Any], threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.cfg = build(RunConfig, cfg_dict)
        self.data = make_dataset(self.cfg)
        self.model = make_model(self.cfg, self.data)

    def ready(self) -> bool:
        return True

    def run(self, global_vec: torch.Tensor, jobs: list[tuple[dict[str, Any], ClientState | None]]) -> list[ClientResult]:
        out = []
        for task_dict, state in jobs:
            task = TaskSpec.from_dict(task_dict)
            x, y = self.data.client_data(task.client_id)
            out.append(run_client_round(self.model, global_vec, x, y, task, state))
        return out
