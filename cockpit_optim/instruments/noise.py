"""Gradient-noise instruments: CABS (App. B.3), EarlyStopping (App. B.4, eq. 14d), MeanGSNR.

Notation: ``M_d = (1/B) sum_n g_{n,d}^2``, ``var_d = (sum_n g_{n,d}^2 - B g_d^2) / (B - 1)``.
All sums run in float64.
"""

from __future__ import annotations

import torch

from ..engine.request import Request, Statistics
from .base import Instrument, Unavailable, ratio, require, require_batch


class CABS(Instrument):
    """``lr * sum_d (M_d - g_d^2) / L_B`` (eq. 12), lr of the first parameter group."""

    name = "CABS"
    needs = Request(losses=True, sq_norms=True, mean_grads=True)

    def compute(self, stats: Statistics) -> float:
        require(stats, "losses", "sq_norms", "mean_grads")
        require_batch(stats)
        noise = float(stats.sq_norms.sum()) / stats.batch_size - stats.grad_sq_norm
        return stats.lr * ratio(noise, float(stats.losses.mean()), "the mini-batch loss")


class EarlyStopping(Instrument):
    """``1 - (B / D') sum_{d: var_d > 0} g_d^2 / var_d`` (eq. 14d); ``D'`` counts the coordinates
    with positive variance (no epsilon: dead units are left out instead of biasing the sum)."""

    name = "EarlyStopping"
    needs = Request(sgs=True, mean_grads=True)

    def compute(self, stats: Statistics) -> float:
        require(stats, "sgs", "mean_grads")
        require_batch(stats)
        b = stats.batch_size
        grad2 = stats.flat_mean_grad.square()
        var = (stats.flat_sgs - b * grad2) / (b - 1)
        keep = var > 0
        count = int(keep.sum())
        if count == 0:
            raise Unavailable("no coordinate has positive gradient variance")
        ratio = torch.where(keep, grad2 / var, 0.0)
        return float(1.0 - b / count * ratio.sum())


class MeanGSNR(Instrument):
    """``(1/D') sum_{d: M_d - g_d^2 > 0} g_d^2 / (M_d - g_d^2)``: mean gradient signal-to-noise
    ratio over the coordinates with positive (biased) variance."""

    name = "MeanGSNR"
    needs = Request(sgs=True, mean_grads=True)

    def compute(self, stats: Statistics) -> float:
        require(stats, "sgs", "mean_grads")
        require_batch(stats)
        grad2 = stats.flat_mean_grad.square()
        noise = stats.flat_sgs / stats.batch_size - grad2
        keep = noise > 0
        count = int(keep.sum())
        if count == 0:
            raise Unavailable("no coordinate has positive gradient variance")
        return float(torch.where(keep, grad2 / noise, 0.0).sum() / count)
