"""Gradient tests of Byrd et al. (2012) and Bollapragada et al. (2018), paper App. B.6.

With ``S = sum_n ||g_n||^2``, ``P = sum_n (g_n . g)^2`` and ``G = ||g||^2``, each test reports the
smallest radius for which the practical test (eqs. 19c, 23c, 25) holds.
"""

from __future__ import annotations

import math

from ..contract import Request, Statistics
from .base import Instrument, Unavailable, require, require_batch


def _moments(stats: Statistics, dots: bool) -> tuple[int, float, float, float]:
    require(stats, "sq_norms", "mean_grads", *(("mean_dots",) if dots else ()))
    require_batch(stats)
    norm2 = stats.grad_sq_norm
    if norm2 == 0.0:
        raise Unavailable("the mini-batch gradient is zero")
    inner = stats.mean_dots_sq_sum if dots else math.nan
    return stats.batch_size, stats.sq_norms_sum, inner, norm2


def _root(value: float) -> float:
    return math.sqrt(max(value, 0.0)) if math.isfinite(value) else value


class NormTest(Instrument):
    """``sqrt((S / G - B) / (B (B - 1)))`` (eq. 19c)."""

    name = "NormTest"
    panel = "gradients"
    needs = Request(sq_norms=True, mean_grads=True)
    reads = ("sq_norms_sum", "grad_sq_norm")

    def compute(self, stats: Statistics) -> float:
        b, s, _, g = _moments(stats, dots=False)
        return _root((s / g - b) / (b * (b - 1)))


class InnerTest(Instrument):
    """``sqrt((P / G^2 - B) / (B (B - 1)))`` (eq. 23c)."""

    name = "InnerTest"
    panel = "gradients"
    needs = Request(mean_dots=True, mean_grads=True, sq_norms=True)
    reads = ("sq_norms_sum", "grad_sq_norm", "mean_dots_sq_sum")

    def compute(self, stats: Statistics) -> float:
        b, _, p, g = _moments(stats, dots=True)
        return _root((p / g**2 - b) / (b * (b - 1)))


class OrthoTest(Instrument):
    """``sqrt((S / G - P / G^2) / (B (B - 1)))``: the orthogonal residual (eq. 25b, corrected)."""

    name = "OrthoTest"
    panel = "gradients"
    needs = Request(mean_dots=True, mean_grads=True, sq_norms=True)
    reads = ("sq_norms_sum", "grad_sq_norm", "mean_dots_sq_sum")

    def compute(self, stats: Statistics) -> float:
        b, s, p, g = _moments(stats, dots=True)
        return _root((s / g - p / g**2) / (b * (b - 1)))


__all__ = ["InnerTest", "NormTest", "OrthoTest"]
