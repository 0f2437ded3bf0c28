"""The `ntk` server strategy: NTK-FL and CP-NTK-FL on the round engine.

Every selected client gets a `jacobian` task (thinwire.client.kinds.jacobian); results are handed to an
NTKRound (thinwire.ntk.round: shuffler, kernel evolution, tau chosen on the server's
validation split). The round closes when every selected client has delivered (or is gone / the
deadline passes), since each client's rows enlarge the kernel. Flags: --ntk-loss, --ntk-taus,
--ntk-eta, --ntk-val-fraction, --ntk-project, --ntk-subsample, --ntk-shuffle, --ntk-max-samples.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from thinwire.errors import ConfigError
from thinwire.ntk import kernel as ntk
from thinwire.ntk.round import NTKRound, NTKSettings, validation_split
from thinwire.server.strategy import Result, RoundView, Strategy, close_when_all, register
from thinwire.task import Task
from thinwire.training import model_spec


@register("ntk")
class NTKStrategy(Strategy):
    name = "ntk"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        from thinwire.data.datasets import dataset_from_config
        from thinwire.models import model_from_config

        self.settings = NTKSettings.from_config(cfg)
        data = dataset_from_config(cfg)
        self._check_round_size(data)
        self._num_classes = data.num_classes
        self._max_rows = max((self._rows(int(s)) for s in data.client_sizes()), default=0)
        model = model_from_config(cfg, data)
        x_val, y_val = validation_split(data, cfg.ntk_val_fraction, cfg.seed)
        self.state = NTKRound(self.settings, model, model_spec(model), x_val, y_val, data.num_classes)

    def _rows(self, size: int) -> int:
        """Samples a client of `size` uploads after --ntk-subsample (as client.jacobian.subsample_indices)."""
        return max(1, math.ceil(self.settings.subsample * size - 1e-9)) if size > 0 else 0

    def max_result_bytes(self, model_numel: int) -> int:
        """One result's bound: the largest client's rows x d_2 x (d or d') fp32 Jacobian, its fp32
        outputs and int64 labels, plus 1 MiB for headers and codec framing (codecs do not exceed fp32)."""
        n, d2 = self._max_rows, self._num_classes
        cols = self.settings.project or model_numel
        return 4 * n * d2 * cols + 4 * n * d2 + 8 * n + (1 << 20)

    def _check_round_size(self, data) -> None:
        """Refuse up front (one line) a run whose largest possible round passes the N limit."""
        sizes = sorted((int(s) for s in data.client_sizes()), reverse=True)[: self.cfg.selected_per_round]
        worst = sum(self._rows(s) for s in sizes if s > 0)
        try:
            ntk.check_kernel_size(worst, self.settings.max_samples)
        except ntk.KernelTooLarge as e:
            raise ConfigError("ntk_max_samples", f"the {len(sizes)} largest clients hold N={worst} samples "
                              f"(after --ntk-subsample), above the limit {self.settings.max_samples}",
                              "a larger --ntk-max-samples, a smaller --per-round or --ntk-subsample") from e

    def configure_client(self, rnd: int, client_id: int) -> Task:
        return Task.for_config(self.cfg, rnd, client_id, "jacobian", **self.settings.task_params(rnd))

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self.state.begin(rnd, global_vec)

    def accept(self, result: Result) -> None:
        t = result.tensors
        missing = {"jacobian", "labels", "outputs"} - set(t)
        if missing:
            raise ValueError(f"result: ntk needs tensors jacobian, labels, outputs; missing {sorted(missing)}")
        self.state.add(t["jacobian"], t["labels"], t["outputs"])

    def should_close(self, view: RoundView) -> bool | float:
        return close_when_all(view)

    def finalize(self) -> tuple[torch.Tensor, dict[str, float]]:
        return self.state.finalize()

    def state_dict(self) -> dict[str, Any]:
        return {}      # nothing persists between rounds: each round linearises afresh
