"""Loss, Time, GradNorm, Distance and UpdateSize: readings that need no individual gradients."""

from __future__ import annotations

import math
import time

from ..contract import Request, Statistics
from .base import Instrument, Unavailable, require


class Loss(Instrument):
    """Mini-batch loss ``L_B(theta_t) = (1/B) sum_n l_n``."""

    name = "Loss"
    needs = Request(losses=True)
    reads = ("loss_mean",)

    def compute(self, stats: Statistics) -> float:
        require(stats, "losses")
        return stats.loss_mean


class Time(Instrument):
    """Wall-clock time (``time.time()``) when the step's values reached the host."""

    name = "Time"

    def compute(self, stats: Statistics) -> float:
        return time.time()


class GradNorm(Instrument):
    """``||g||_2`` of the gradient the optimizer sees (``param.grad``); per parameter under
    ``GradNorm_params``."""

    name = "GradNorm"
    panel = "step size"
    needs = Request(grad_norms=True)

    def compute(self, stats: Statistics) -> float:
        require(stats, "grad_norms")
        return math.sqrt(sum(v * v for v in stats.grad_norms.values()))

    def extras(self, stats: Statistics) -> dict:
        return {"GradNorm_params": dict(stats.grad_norms or {})}


class Distance(Instrument):
    """``||theta_t - theta_0||_2``, ``theta_0`` the parameters at the first ``step()``."""

    name = "Distance"
    panel = "step size"
    needs = Request(distance=True)

    def compute(self, stats: Statistics) -> float:
        require(stats, "distance")
        return stats.distance


class UpdateSize(Instrument):
    """``||theta_{t+1} - theta_t||_2``: the size of the update made by step t."""

    name = "UpdateSize"
    needs = Request(update=True)
    after_update = True
    reads = ("update_size",)
    panel = "step size"

    def compute(self, stats: Statistics) -> float:
        if "update" in stats.unavailable:
            raise Unavailable(stats.unavailable["update"])
        return stats.reduced("update_size")
