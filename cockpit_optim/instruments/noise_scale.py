"""Gradient noise scale (McCandlish et al. 2018, "An empirical model of large-batch training").

``B_simple = tr(Sigma) / |G|^2``: the batch size at which the gradient noise equals the signal.
From individual gradients, with ``S = sum_n ||g_n||^2`` and ``g`` the batch gradient:
``tr(Sigma) = (S - B ||g||^2) / (B - 1)`` and the unbiased ``|G|^2 = ||g||^2 - tr(Sigma) / B``.
Under data parallelism a second estimate needs no individual gradients: with the per-rank batch
``b`` and gradient ``g_b`` against the global ``B`` and ``g`` (their Appendix A),
``|G|^2 = (B ||g||^2 - b ||g_b||^2) / (B - b)``, ``tr(Sigma) = (||g_b||^2 - ||g||^2) / (1/b - 1/B)``.
Both are noisy per step; McCandlish et al. average numerator and denominator separately, which
:func:`noise_scale_average` does over a record history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..contract import Request, Statistics
from .base import Instrument, Unavailable, require, require_batch


class GradientNoiseScale(Instrument):
    """``B_simple`` from individual gradients; extras ``GradientNoiseScale_trace`` (``tr Sigma``),
    ``GradientNoiseScale_signal`` (``|G|^2``) and, with several ranks, the two-batch estimates
    ``GradientNoiseScale_two_batch`` (with ``_trace`` and ``_signal``)."""

    name = "GradientNoiseScale"
    panel = "step size"
    needs = Request(sq_norms=True, mean_grads=True)
    reads = ("sq_norms_sum", "grad_sq_norm")

    def _parts(self, stats: Statistics) -> tuple[float, float]:
        require(stats, "sq_norms", "mean_grads")
        require_batch(stats)
        b = stats.batch_size
        g2 = stats.grad_sq_norm
        trace = (stats.sq_norms_sum - b * g2) / (b - 1)
        return trace, g2 - trace / b

    def compute(self, stats: Statistics) -> float:
        trace, signal = self._parts(stats)
        if not signal > 0:
            raise Unavailable("the estimated |G|^2 is not positive (noise dominates)")
        return trace / signal

    def extras(self, stats: Statistics) -> dict:
        try:
            trace, signal = self._parts(stats)
        except Unavailable:
            return {}
        out = {"GradientNoiseScale_trace": trace, "GradientNoiseScale_signal": signal}
        if stats.rank_grad_sq_norm is not None and stats.rank_batch_size < stats.batch_size:
            small, big = stats.rank_batch_size, stats.batch_size
            g_small, g_big = stats.rank_grad_sq_norm, stats.grad_sq_norm
            signal2 = (big * g_big - small * g_small) / (big - small)
            trace2 = (g_small - g_big) / (1 / small - 1 / big)
            out.update(
                {
                    "GradientNoiseScale_two_batch": trace2 / signal2 if signal2 > 0 else math.nan,
                    "GradientNoiseScale_two_batch_trace": trace2,
                    "GradientNoiseScale_two_batch_signal": signal2,
                }
            )
        return out


def noise_scale_average(
    records: Sequence[dict], decay: float = 0.95, prefix: str = "GradientNoiseScale"
) -> list[float]:
    """Ratio of exponential moving averages of ``tr(Sigma)`` and ``|G|^2`` over ``records``
    (keys ``{prefix}_trace`` and ``{prefix}_signal``; records without them are skipped)."""
    trace = signal = 0.0
    weight = 0.0
    out = []
    for record in records:
        t, s = record.get(f"{prefix}_trace"), record.get(f"{prefix}_signal")
        if t is None or s is None or not (math.isfinite(t) and math.isfinite(s)):
            continue
        trace = decay * trace + (1 - decay) * t
        signal = decay * signal + (1 - decay) * s
        weight = decay * weight + (1 - decay)
        out.append(trace / signal if signal > 0 else math.nan)
    return out
