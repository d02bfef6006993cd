"""Gradient-noise instruments: CABS (App. B.3), EarlyStopping (App. B.4, eq. 14d), MeanGSNR.

Notation: ``M_d = (1/B) sum_n g_{n,d}^2``, ``var_d = (sum_n g_{n,d}^2 - B g_d^2) / (B - 1)``.
All sums run in float64.
"""

from __future__ import annotations

from ..contract import Request, Statistics
from .base import Instrument, Unavailable, ratio, require, require_batch


class CABS(Instrument):
    """``lr * sum_d (M_d - g_d^2) / L_B`` (eq. 12), lr of the first parameter group."""

    name = "CABS"
    needs = Request(losses=True, sq_norms=True, mean_grads=True)
    reads = ("sq_norms_sum", "grad_sq_norm", "loss_mean")

    def compute(self, stats: Statistics) -> float:
        require(stats, "losses", "sq_norms", "mean_grads")
        require_batch(stats)
        noise = stats.sq_norms_sum / stats.batch_size - stats.grad_sq_norm
        return stats.lr * ratio(noise, stats.loss_mean, "the mini-batch loss")


class EarlyStopping(Instrument):
    """``1 - (B / D') sum_{d: var_d > 0} g_d^2 / var_d`` (eq. 14d); ``D'`` counts the coordinates
    with positive variance (no epsilon: dead units are left out instead of biasing the sum).
    With ``var_d = B / (B - 1) v_d`` this is ``1 - ((B - 1) / D') sum_d g_d^2 / v_d``."""

    name = "EarlyStopping"
    needs = Request(sum_sq_grads=True, mean_grads=True)
    reads = ("signal_to_noise",)

    def compute(self, stats: Statistics) -> float:
        require(stats, "sum_sq_grads", "mean_grads")
        require_batch(stats)
        total, count = stats.signal_to_noise
        if count == 0:
            raise Unavailable("no coordinate has positive gradient variance")
        return 1.0 - (stats.batch_size - 1) / count * total


class MeanGSNR(Instrument):
    """``(1/D') sum_{d: v_d > 0} g_d^2 / v_d``, ``v_d = M_d - g_d^2``: mean gradient
    signal-to-noise ratio over the coordinates with positive (biased) variance."""

    name = "MeanGSNR"
    needs = Request(sum_sq_grads=True, mean_grads=True)
    reads = ("signal_to_noise",)

    def compute(self, stats: Statistics) -> float:
        require(stats, "sum_sq_grads", "mean_grads")
        require_batch(stats)
        total, count = stats.signal_to_noise
        if count == 0:
            raise Unavailable("no coordinate has positive gradient variance")
        return total / count
