"""A simulation worker: one Ray actor that executes many virtual clients per round (Flower-style
batching). It builds the model once from the run config; virtual clients are just
(task, state) pairs passed in, so it holds no per-client state itself."""
from __future__ import annotations

import os
from typing import Any

import torch

from thinwire.client.runtime import ClientResult, ClientState, execute
from thinwire.config import RunConfig, build
from thinwire.models import model_from_config
from thinwire.plugins import load_run_plugins
from thinwire.task import Task
from thinwire.training import model_spec


class SimWorker:
    """Plain class; the engine wraps it with ray.remote so it can also run in-process.

    The driver builds the data set once and hands it over with `load` (through Ray's object store),
    so workers start in parallel with the driver's own set-up and never rebuild or re-partition.
    """

    def __init__(self, cfg_dict: dict[str, Any], threads: int = 1) -> None:
        from thinwire.logs import setup_from_env
        setup_from_env()                    # -v / -vv of the driver, in this worker too
        torch.set_num_threads(threads)
        self.cfg = build(RunConfig, cfg_dict)
        load_run_plugins(self.cfg)          # user strategies / codecs / task kinds, in this process too
        self.data = None
        self.model: torch.nn.Module | None = None

    def load(self, data) -> bool:
        self.data = data
        self.model = model_from_config(self.cfg, self.data)
        self.spec = model_spec(self.model)
        return True

    def pid(self) -> int:
        """This actor's process id (for operators and chaos tests that kill -9 a worker)."""
        return os.getpid()

    def run(self, global_vec: torch.Tensor, jobs: list[tuple[dict[str, Any], ClientState | None]]) -> list[ClientResult]:
        out = []
        for task_dict, state in jobs:
            task = Task.from_dict(task_dict)
            x, y = self.data.client_data(task.client_id)
            out.append(execute(task, model=self.model, spec=self.spec, global_vec=global_vec, data=self.data,
                               x=x, y=y, state=state))
        return out
