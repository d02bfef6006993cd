"""``AlphaLR``: keep the median Alpha reading near a target by scaling the learning rate."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any

from scipy.stats import binomtest

from .base import Action, Controller, Steerable, reading

__all__ = ["AlphaLR"]


class AlphaLR(Controller):
    """Scale every learning rate so that the median Alpha of a window stays near ``target``.

    Alpha (paper Section 3.3, App. B.2) places the step on a noisy quadratic fit of the loss along
    the update: -1 = no progress, 0 = valley floor, +1 = opposite wall at equal height.  Good runs
    overshoot slightly (``alpha > 0``), hence the default target 0.15.

    Regular rule: from step ``warmup`` on, the finite Alpha readings fill a window of ``window``
    values.  With the window full, its median ``m`` outside the dead band
    ``|m - target| <= dead_band`` and the sign test significant, every group's learning rate is
    multiplied by

        r = clip(((1 + target) / (1 + m)) ** 0.5, max_change[0], max_change[1])

    (``m <= -1``: ``r = max_change[1]``, the limit ``m -> -1+``), and the window is emptied.  The
    sign test asks whether the window's readings lie on one side of ``target`` more often than
    chance: with ``k`` of the ``n`` readings different from ``target`` above it, its two-sided
    p-value is ``P(|K - n/2| >= |k - n/2|)`` for ``K ~ Binomial(n, 1/2)``; the rule acts only when
    ``p <= significance`` (with ``window < 6`` no p-value reaches 0.05: use ``significance=1`` to
    act on the median alone).  Otherwise, or inside the dead band, the window slides on.  Every
    regular action states its median, ``k`` of ``n`` and ``p``.

    The window is kept when the batch size changes (Alpha is defined per step, and its noise
    terms use the record's own batch size), so the rule keeps working next to a batch-size
    controller such as :class:`~.CABSBatchSize` that changes the batch often.

    Emergency rule (from the first record on): the learning rates are halved, and the window is
    emptied, when

    * at least ``overshoots[0]`` of the last ``overshoots[1]`` finite Alpha readings are ``>= 1``
      (steps that repeatedly reach the opposite wall or beyond; a single noisy reading >= 1 is
      common in a healthy run and is not evidence),
    * the loss is not finite, or
    * the loss is far above its running minimum: ``E > blowup * min(E)``, where ``E`` is the
      exponential moving average (factor ``loss_smoothing``) of the mini-batch loss and
      ``min(E)`` its running minimum (which assumes a non-negative loss).  After such a loss
      emergency the running minimum restarts at the current ``E``, so a loss that stays high but
      no longer climbs causes no further halving.

    The controller keeps the product ``scale`` of all its changes within ``bounds`` (relative to the
    learning rate at the start) and applies the ratio ``new_scale / scale`` to the current
    ``lr`` of every parameter group: a schedule that updates ``lr`` multiplicatively (torch's
    chainable schedulers, e.g. ``StepLR``, ``ExponentialLR``) keeps working, multiplied by
    ``scale``; a scheduler that recomputes ``lr`` from its base value (e.g. ``LambdaLR``) would
    overwrite the change.  An action's ``from``/``to`` is the learning rate (a list of them when
    the optimizer has several parameter groups).

    Args:
        target: desired median Alpha.
        window: number of valid readings per decision.
        dead_band: no regular change while ``|median - target| <= dead_band``.
        significance: largest sign-test p-value of a regular change (1: no test).
        max_change: ``(smallest, largest)`` factor of one regular change.
        bounds: ``(lowest, highest)`` overall factor relative to the initial learning rate.
        warmup: readings of steps before this one are not used by the regular rule.
        overshoots: ``(count, readings)``: an emergency needs ``count`` readings ``>= 1`` among
            the last ``readings`` finite ones.
        blowup: loss emergency factor (see above).
        loss_smoothing: EMA factor of the loss for the emergency rule.
    """

    instruments = ("Alpha", "Loss")
    #: Factor of an emergency change.
    emergency_factor = 0.5

    def __init__(
        self,
        *,
        target: float = 0.15,
        window: int = 20,
        dead_band: float = 0.05,
        significance: float = 0.05,
        max_change: tuple[float, float] = (0.5, 1.15),
        bounds: tuple[float, float] = (0.01, 10.0),
        warmup: int = 20,
        overshoots: tuple[int, int] = (3, 10),
        blowup: float = 10.0,
        loss_smoothing: float = 0.9,
    ) -> None:
        if target <= -1:
            raise ValueError(f"target must exceed -1, got {target}")
        if window < 1 or warmup < 0 or dead_band < 0:
            raise ValueError(
                f"need window >= 1, warmup >= 0, dead_band >= 0; got {window}, {warmup}, {dead_band}"
            )
        if not 0 < significance <= 1:
            raise ValueError(f"significance must lie in (0, 1], got {significance}")
        if not 0 < max_change[0] <= 1 <= max_change[1]:
            raise ValueError(f"max_change must satisfy 0 < low <= 1 <= high, got {max_change}")
        if not 0 < bounds[0] <= 1 <= bounds[1]:
            raise ValueError(f"bounds must satisfy 0 < low <= 1 <= high, got {bounds}")
        if not 1 <= overshoots[0] <= overshoots[1]:
            raise ValueError(f"overshoots must satisfy 1 <= count <= readings, got {overshoots}")
        if not blowup > 1 or not 0 <= loss_smoothing < 1:
            raise ValueError(
                f"need blowup > 1 and 0 <= loss_smoothing < 1, got {blowup}, {loss_smoothing}"
            )
        self.target, self.window, self.dead_band = float(target), int(window), float(dead_band)
        self.significance = float(significance)
        self.max_change = (float(max_change[0]), float(max_change[1]))
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.warmup, self.blowup = int(warmup), float(blowup)
        self.overshoots = (int(overshoots[0]), int(overshoots[1]))
        self.loss_smoothing = float(loss_smoothing)
        self.scale = 1.0
        self._alphas: deque[float] = deque(maxlen=self.window)
        self._recent: deque[float] = deque(maxlen=self.overshoots[1])
        self._loss_average: float | None = None
        self._loss_minimum: float | None = None

    def _loss_emergency(self, record: Mapping[str, Any]) -> str | None:
        """Update the loss statistics; the reason for a loss emergency, or ``None``."""
        if "Loss" not in record:
            return None
        loss = reading(record, "Loss")
        if not math.isfinite(loss):
            return f"Loss={loss} is not finite"
        average = loss
        if self._loss_average is not None:
            s = self.loss_smoothing
            average = s * self._loss_average + (1 - s) * loss
        self._loss_average = average
        minimum = self._loss_minimum
        if minimum is not None and minimum > 0 and average > self.blowup * minimum:
            self._loss_minimum = average
            return (
                f"Loss={loss:.4g}: average {average:.4g} > blowup={self.blowup:g} * "
                f"running minimum {minimum:.4g}"
            )
        self._loss_minimum = average if minimum is None else min(minimum, average)
        return None

    def _overshoot_emergency(self, alpha: float) -> str | None:
        """Add a finite Alpha reading to the recent ones; the reason for an emergency, or ``None``."""
        if not math.isfinite(alpha):
            return None
        self._recent.append(alpha)
        high = [a for a in self._recent if a >= 1]
        count, readings = self.overshoots
        if len(high) < count:
            return None
        return (
            f"{len(high)} of the last {len(self._recent)} Alpha readings >= 1 "
            f"(needs {count} of {readings}; largest {max(high):.4g})"
        )

    def _rescale(
        self, record: Mapping[str, Any], optimizer: Steerable, factor: float, why: str
    ) -> list[Action]:
        new_scale = min(max(self.scale * factor, self.bounds[0]), self.bounds[1])
        if new_scale == self.scale:
            return []
        ratio, self.scale = new_scale / self.scale, new_scale
        self._alphas.clear()
        old = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * ratio
        new = [group["lr"] for group in optimizer.param_groups]
        why = f"{why}; lr x {ratio:.4g}, now x {self.scale:.4g} of the initial rate"
        if len(old) == 1:
            return [self.action(record, "lr", old[0], new[0], why)]
        return [self.action(record, "lr", old, new, why)]

    def sign_test(self) -> tuple[int, int, float]:
        """``(k, n, p)`` of the window: ``k`` of the ``n`` readings other than ``target`` lie
        above it; ``p`` is the two-sided sign-test p-value (1 for an empty comparison)."""
        above = sum(a > self.target for a in self._alphas)
        n = above + sum(a < self.target for a in self._alphas)
        return above, n, (binomtest(above, n, 0.5).pvalue if n else 1.0)

    def observe(self, record: Mapping[str, Any], optimizer: Steerable) -> list[Action]:
        alpha = reading(record, "Alpha")
        reason = self._loss_emergency(record) or self._overshoot_emergency(alpha)
        if reason is not None:
            self._recent.clear()
            return self._rescale(record, optimizer, self.emergency_factor, f"emergency: {reason}")
        if int(record.get("step", 0)) < self.warmup or not math.isfinite(alpha):
            return []
        self._alphas.append(alpha)
        if len(self._alphas) < self.window:
            return []
        median = statistics.median(self._alphas)
        if abs(median - self.target) <= self.dead_band:
            return []
        above, n, p = self.sign_test()
        if p > self.significance:
            return []
        low, high = self.max_change
        factor = high if median <= -1 else ((1 + self.target) / (1 + median)) ** 0.5
        factor = min(max(factor, low), high)
        why = (
            f"median Alpha={median:.4g} over {self.window} readings vs target={self.target:g} "
            f"+- dead_band={self.dead_band:g}; {above} of {n} above target, sign test "
            f"p={p:.2g} <= {self.significance:g}"
        )
        return self._rescale(record, optimizer, factor, why)

    def state_dict(self) -> dict[str, Any]:
        """Scale, the decision window, the recent readings and the loss statistics."""
        return {
            "scale": self.scale,
            "alphas": list(self._alphas),
            "recent": list(self._recent),
            "loss_average": self._loss_average,
            "loss_minimum": self._loss_minimum,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scale = float(state["scale"])
        self._alphas = deque(state["alphas"], maxlen=self.window)
        self._recent = deque(state.get("recent", ()), maxlen=self.overshoots[1])
        self._loss_average = state["loss_average"]
        self._loss_minimum = state["loss_minimum"]
