"""``EvidenceEarlyStopping``: stop training when the gradient is indistinguishable from noise
(Mahsereci, Balles, Lassner, Hennig 2017)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from .base import Action, Controller, Steerable, reading

__all__ = ["EvidenceEarlyStopping"]


class EvidenceEarlyStopping(Controller):
    """Stop when the averaged evidence-based criterion stays above 0 (paper App. B.4, eq. 14).

    The record's reading ``EarlyStopping = 1 - (B / D') sum_d g_d^2 / var_d`` is
    positive when the mini-batch gradient is no larger than its noise would make it if the
    population gradient were zero, i.e. when further steps mostly fit the sample.  The criterion
    of one mini-batch is noisy, so the controller averages the last ``window`` finite readings.
    From step ``min_steps`` on, with the window full, it counts the consecutive records whose
    average is ``> 0`` (a record with an average ``<= 0`` restarts the count; a ``nan`` reading
    is skipped).  When the count reaches ``patience`` it sets ``optimizer.should_stop = True`` and
    ``optimizer.stop_reason`` and reports a ``"stop"`` action, once.

    Args:
        window: number of readings averaged.
        patience: consecutive tracked records with a positive average needed to stop.
        min_steps: records of earlier steps never count.
    """

    instruments = ("EarlyStopping",)

    def __init__(self, *, window: int = 10, patience: int = 10, min_steps: int = 0) -> None:
        if window < 1 or patience < 1 or min_steps < 0:
            raise ValueError(
                f"need window >= 1, patience >= 1, min_steps >= 0; got {window}, {patience}, "
                f"{min_steps}"
            )
        self.window, self.patience, self.min_steps = int(window), int(patience), int(min_steps)
        self._values: deque[float] = deque(maxlen=self.window)
        self.count = 0
        self.stopped = False

    def observe(self, record: Mapping[str, Any], optimizer: Steerable) -> list[Action]:
        value = reading(record, "EarlyStopping")
        if self.stopped or not math.isfinite(value):
            return []
        self._values.append(value)
        step = int(record.get("step", 0))
        if step < self.min_steps or len(self._values) < self.window:
            return []
        average = sum(self._values) / self.window
        self.count = self.count + 1 if average > 0 else 0
        if self.count < self.patience:
            return []
        self.stopped = True
        why = (
            f"EarlyStopping averaged over {self.window} readings = {average:.4g} > 0 for "
            f"{self.count} tracked steps (patience {self.patience})"
        )
        optimizer.should_stop = True
        optimizer.stop_reason = f"{type(self).__name__} at step {step}: {why}"
        return [self.action(record, "stop", False, True, why)]

    def state_dict(self) -> dict[str, Any]:
        """Window of readings, the current count and whether it has stopped."""
        return {"values": list(self._values), "count": self.count, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._values = deque(state["values"], maxlen=self.window)
        self.count, self.stopped = int(state["count"]), bool(state["stopped"])
