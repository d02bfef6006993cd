"""Alpha (paper Section 2, App. B.2): where on a noise-informed parabola along the update the
optimizer stepped.  -1: no progress, 0: the valley floor, +1: the opposite wall at equal height."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..engine.request import Request, Statistics
from ..engine.transfer import Deferred, HostTransfer
from ..errors import warn_reading
from .base import Instrument, Unavailable, require

#: Replacement for an observed variance of exactly zero.
MIN_VARIANCE = 1e-10


@dataclass(frozen=True)
class LineObservation:
    """Loss and slope along the update direction at one end of the step, with the variances of the
    two *means* (unbiased sample variance over the batch divided by the batch size)."""

    loss: float
    loss_var: float
    slope: float
    slope_var: float

    @classmethod
    def deferred(cls, transfer: HostTransfer, losses: Tensor, projections: Tensor) -> Deferred:
        """From individual losses ``l_n`` and slopes ``g_n . u`` (float64 tensors, length
        B >= 2): moments on the device, the observation after the step's host read."""
        b = losses.numel()
        samples = torch.stack([losses.double(), projections.to(losses.device).double()])
        variances, means = torch.var_mean(samples, dim=1, unbiased=True)

        def observe(values: list[float]) -> LineObservation:
            loss, slope, loss_var, slope_var = values
            return cls(loss, loss_var / b, slope, slope_var / b)

        return transfer.defer(torch.cat([means, variances]), convert=observe)


def fit_alpha(step: float, start: LineObservation, end: LineObservation) -> float:
    """Weighted least-squares parabola ``q(x) = w0 + w1 x + w2 x^2`` through ``q(0), q(s), q'(0),
    q'(s)`` with weights 1/variance (eq. 10); ``alpha = 2 s / (-w1 / w2) - 1`` if ``w2 > 0``, else -1.
    """
    if step == 0.0:
        return math.nan
    variances = np.array([start.loss_var, end.loss_var, start.slope_var, end.slope_var])
    if (variances == 0).any():
        warn_reading("Alpha: an observed variance is zero; replaced by 1e-10")
        variances = np.where(variances == 0, MIN_VARIANCE, variances)
    design = np.array(
        [[1.0, 0.0, 0.0], [1.0, step, step**2], [0.0, 1.0, 0.0], [0.0, 1.0, 2 * step]]
    )
    values = np.array([start.loss, end.loss, start.slope, end.slope])
    sqrt_w = 1.0 / np.sqrt(variances)
    with np.errstate(all="ignore"):
        _, w1, w2 = np.linalg.lstsq(design * sqrt_w[:, None], values * sqrt_w, rcond=None)[0]
        if not w2 > 0:
            return -1.0
        alpha = 2.0 * step / (-w1 / w2) - 1.0
    if not math.isfinite(alpha):
        warn_reading("Alpha is nan at this step: the fitted parabola is degenerate (overflow)")
        return math.nan
    return float(alpha)


@dataclass(frozen=True)
class AlphaObservations:
    """Both ends of update t: ``theta_t`` on batch t and ``theta_{t+1}`` on batch t+1."""

    step: float
    start: LineObservation | None
    end: LineObservation | None


class Alpha(Instrument):
    """Normalized step on the noisy quadratic fit along the update actually taken (any optimizer);
    belongs to step t and is completed during step t+1."""

    name = "Alpha"
    needs = Request(losses=True, update=True, projection=True)
    after_update = True

    def compute(self, stats: Statistics) -> float:
        require(stats, "alpha")
        obs: AlphaObservations = stats.alpha
        if obs.step == 0.0:
            raise Unavailable("the update is zero")
        if obs.start is None or obs.end is None:
            raise Unavailable(stats.unavailable.get("alpha", "batch size below 2"))
        values = (obs.start.loss, obs.end.loss, obs.start.slope, obs.end.slope)
        if not all(math.isfinite(v) for v in values):
            raise Unavailable("non-finite loss or gradient")
        return fit_alpha(obs.step, obs.start, obs.end)
