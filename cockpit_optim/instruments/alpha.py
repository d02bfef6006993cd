"""Alpha (paper Section 2, App. B.2): where on a noise-informed parabola along the update the
optimizer stepped.  -1: no progress, 0: the valley floor, +1: the opposite wall at equal height."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..contract import Projection, Request, Statistics
from ..errors import warn_reading
from ..transfer import Deferred, HostTransfer
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
    """Both ends of update t: ``theta_t`` on batch t and ``theta_{t+1}`` on batch t+1 (before the
    step's read, ``Deferred`` values)."""

    step: Any
    start: Any
    end: Any


class Alpha(Instrument):
    """Normalized step on the noisy quadratic fit along the update actually taken (any optimizer);
    belongs to step t and is completed during step t+1.

    After update t it keeps the direction ``u = update / ||update||`` on the device and the
    start observation (``l_n`` and ``g_n . u`` on batch t, at ``theta_t``); step t+1 projects its
    individual gradients on ``u`` (at ``theta_{t+1}``, on batch t+1) for the end observation."""

    name = "Alpha"
    needs = Request(losses=True, update=True)
    completes_later = True
    panel = "step size"

    def __init__(self) -> None:
        self._begun: _Begun | None = None  # the reading of the last update
        self._ending: AlphaObservations | None = None  # being completed at this step
        self._reason = "batch size below 2"

    def begin(self, stats: Statistics) -> None:
        require(stats, "update")
        norm = stats.reduce("update_size")  # a zero update is caught when it is read
        direction = [u / norm.to(u.dtype) for u in stats.update]
        start = None
        projections = stats.project(direction) if stats.project is not None else None
        if stats.batch_size >= 2 and projections is not None and stats.losses is not None:
            start = LineObservation.deferred(stats.transfer, stats.losses, projections)
        self._begun = _Begun(direction, stats.transfer.defer(norm), start)

    def pending(self) -> Request | None:
        if self._begun is None or self._begun.direction is None:
            return None
        return Request(losses=True, projection=Projection(tuple(self._begun.direction)))

    def complete(self, stats: Statistics) -> None:
        begun, self._begun = self._begun, None
        end = None
        if stats.projection is not None and stats.batch_size >= 2:
            end = LineObservation.deferred(stats.transfer, stats.losses, stats.projection)
        self._reason = stats.unavailable.get("projection", "batch size below 2")
        self._ending = AlphaObservations(begun.size, begun.start, end)

    def conclude(self) -> float:
        ending, self._ending = self._ending, None
        obs = AlphaObservations(_host(ending.step), _host(ending.start), _host(ending.end))
        if obs.step == 0.0:
            raise Unavailable("the update is zero")
        if obs.start is None or obs.end is None:
            raise Unavailable(self._reason)
        values = (obs.start.loss, obs.end.loss, obs.start.slope, obs.end.slope)
        if not all(math.isfinite(v) for v in values):
            raise Unavailable("non-finite loss or gradient")
        return fit_alpha(obs.step, obs.start, obs.end)

    def abandon(self) -> None:
        self._begun = None

    def state_dict(self) -> dict:
        """A begun reading: the update's size and direction and the start observation."""
        if self._begun is None:
            return {}
        start = _host(self._begun.start)
        return {
            "size": _host(self._begun.size),
            "direction": self._begun.direction,
            "start": None if start is None else vars(start).copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._begun = None
        if "size" in state:
            start = state["start"]
            self._begun = _Begun(
                state["direction"],
                state["size"],
                None if start is None else LineObservation(**start),
            )


@dataclass
class _Begun:
    """Alpha of an update, begun: its direction (on the device) and what is known of its size and
    of the start observation (deferred until the step's read)."""

    direction: list[Tensor] | None
    size: Deferred | float
    start: Deferred | LineObservation | None


def _host(value: Any) -> Any:
    """The host value of a :class:`Deferred` (values restored from a checkpoint are plain)."""
    return value.value if isinstance(value, Deferred) else value
