"""What both framework callbacks share: building monitors and applying controller decisions."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..optimizer import MonitoredOptimizer

__all__ = ["MonitorSettings", "batch_size_actions"]


class MonitorSettings:
    """The :class:`MonitoredOptimizer` arguments a callback was given, applied to each optimizer
    of the run (``log_dir`` gets one sub-folder per optimizer when there are several)."""

    def __init__(
        self,
        instruments: str | Iterable[Any],
        track: Any,
        controllers: Sequence[Any],
        log_dir: str | os.PathLike | None,
        options: dict[str, Any],
    ) -> None:
        self.instruments, self.track = instruments, track
        self.controllers = list(controllers)
        self.log_dir, self.options = log_dir, dict(options)

    def wrap(
        self,
        optimizer: Optimizer,
        model: nn.Module,
        loss_fn: Any,
        writers: Sequence[Any],
        index: int = 0,
        count: int = 1,
    ) -> MonitoredOptimizer:
        """``optimizer`` itself when it already is a monitor, else a new monitor around it."""
        if isinstance(optimizer, MonitoredOptimizer):
            return optimizer
        log_dir = self.log_dir
        if log_dir is not None and count > 1:
            log_dir = os.path.join(log_dir, f"optimizer_{index}")
        options = dict(self.options)
        options["writers"] = [*options.get("writers", ()), *writers]
        return MonitoredOptimizer(
            optimizer,
            model,
            loss_fn,
            instruments=self.instruments,
            track=self.track,
            log_dir=log_dir,
            controllers=self.controllers if index == 0 else (),
            **options,
        )


def batch_size_actions(records: Iterable[dict]) -> list[int]:
    """The new batch sizes that controller actions in ``records`` set, oldest first."""
    return [
        int(action["to"])
        for record in records
        for action in record.get("actions", ())
        if action.get("what") == "batch_size"
    ]
